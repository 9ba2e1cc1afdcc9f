# Export to Hugging Face `transformers`: the model each generation group samples from (the best
# non-diverged run of the TinyStories lr sweep, the OpenWebText run) as a LlamaForCausalLM folder
# with its tokenizer, loadable offline with AutoModelForCausalLM / AutoTokenizer.from_pretrained.


def export_inputs(wildcards):
    runs = GENERATIONS[wildcards.group].runs
    files = [run_files(run)[kind] for run in runs for kind in ("summary", "model", "config")]
    return files + sorted({f for run in runs for f in tokenizer_files(planned_run(run).tokenizer)})


rule export_hf:
    input:
        export_inputs,
    output:
        directory(export_dir("{group}")),
    params:
        run_dirs=lambda w: " ".join(run_dir(run) for run in GENERATIONS[w.group].runs),
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
