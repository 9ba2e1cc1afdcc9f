# Export to Hugging Face `transformers`: the model each generation group samples from (the best
# non-diverged run of the TinyStories lr sweep, the OpenWebText run) as a LlamaForCausalLM folder
# with its tokenizer, loadable offline with AutoModelForCausalLM / AutoTokenizer.from_pretrained.


rule export_hf:
    input:
        unpack(export_inputs),
    output:
        directory(export_dir("{group}")),
    params:
        run_dirs=lambda w, input: shlex.join(folders(input.summaries)),
    wildcard_constraints:
        group="|".join(map(re.escape, GENERATIONS)),
    log:
        log_path("export_hf", "{group}"),
    shell:
        "tinylm export-hf --run-dir {params.run_dirs} --out {output} > {log} 2>&1"


rule export:
    localrule: True
    input:
        [export_dir(group) for group in GENERATIONS],
