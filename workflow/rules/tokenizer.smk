# Tokenizers: one byte-level BPE per `tokenizers` entry, trained on its corpus's training split;
# token arrays per (tokenizer, corpus, split); the tokenizer report over every validation split.
#
# BPE training and tokenization go before any training job that is ready (priority 1): each takes
# `threads.tokenizer` cores at once, which one-thread training jobs started first would keep busy
# until the end (the OpenWebText arrays were then made after the last TinyStories run).

REPORT_CORPORA = config["tokenizer_report"]["corpora"] or list(config["corpora"])


rule train_bpe:
    input:
        lambda w: download_path(config["tokenizers"][w.tok]["corpus"], "train"),
    output:
        tokenizer_files("{tok}"),
    params:
        vocab_size=lambda w: config["tokenizers"][w.tok]["vocab_size"],
        special=lambda w: " ".join(f"--special-token {shlex.quote(t)}"
                                   for t in config["tokenizers"][w.tok]["special_tokens"]),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    priority: 1
    threads: config["threads"]["tokenizer"]
    log:
        log_path("train_bpe", "{tok}"),
    shell:
        "tinylm train-bpe --input {input} --vocab-size {params.vocab_size} {params.special}"
        " --out-dir {params.out_dir} --workers {threads} > {log} 2>&1"


rule tokenize:
    input:
        tokenizer=lambda w: tokenizer_files(w.tok),
        text=lambda w: download_path(w.corpus, w.split),
    output:
        tokens_path("{tok}", "{corpus}", "{split}"),
    params:
        tokenizer_dir=lambda w, input: os.path.dirname(input.tokenizer[0]),
    priority: 1
    threads: config["threads"]["tokenizer"]
    log:
        log_path("tokenize", "{tok}-{corpus}-{split}"),
    shell:
        "tinylm tokenize --tokenizer-dir {params.tokenizer_dir} --input {input.text}"
        " --output {output} --workers {threads} > {log} 2>&1"


rule tokenizer_report:
    input:
        tokenizers=[tokenizer_files(tok) for tok in config["tokenizers"]],
        corpora=[download_path(corpus, "valid") for corpus in REPORT_CORPORA],
    output:
        json=TOKENIZER_REPORT["json"],
        md=TOKENIZER_REPORT["md"],
    params:
        # NAME=PATH pairs, the paths taken from the inputs, in the same order as the names.
        tokenizers=lambda w, input: " ".join(f"--tokenizer {tok}={folder}" for tok, folder
                                             in zip(config["tokenizers"], folders(input.tokenizers), strict=True)),
        corpora=lambda w, input: " ".join(f"--corpus {corpus}={path}" for corpus, path
                                          in zip(REPORT_CORPORA, input.corpora, strict=True)),
    log:
        log_path("tokenizer_report", "report"),
    shell:
        "tinylm tokenizer-report {params.tokenizers} {params.corpora}"
        " --out-json {output.json} --out-md {output.md} > {log} 2>&1"
