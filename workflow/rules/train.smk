# Per-run configs, training, evaluation, the max-batch probe and text generation.
#
# Caching: `<results>/configs/<run>.json` is rewritten only when that run's config changes (the
# `params` trigger sees the new dict), so only that run's training and its downstream rerun.
# Checkpoints live outside the declared outputs, so a killed training job resumes.
from tinylm.config import RunConfig
from tinylm.training.outputs import checkpoint_file


rule write_run_config:
    input:
        probe_input,
        refinement_input,
    output:
        run_config_path("{run}"),
    params:
        config=lambda w: planned_run(w.run).config.to_dict(),
    log:
        log_path("write_run_config", "{run}"),
    localrule: True
    run:
        RunConfig.from_dict(params.config).save(output[0])
        Path(log[0]).write_text(f"wrote {output[0]}\n")


rule train:
    input:
        config=run_config_path("{run}"),
        train_tokens=lambda w: planned_run(w.run).config.data.train_tokens,
        valid_tokens=lambda w: planned_run(w.run).config.data.valid_tokens,
        probe=probe_input,
        refinement=refinement_input,
    output:
        metrics=run_files("{run}")["metrics"],
        summary=run_files("{run}")["summary"],
        config=run_files("{run}")["config"],
        model=run_files("{run}")["model"],
    params:
        out_dir=lambda w, output: os.path.dirname(output.summary),
        # Not an output: a killed or preempted job leaves its checkpoint for the next attempt.
        checkpoint_dir=lambda w: checkpoint_dir(w.run),
        checkpoint=lambda w: checkpoint_file(checkpoint_dir(w.run)),
    threads: config["threads"]["train"]
    resources:
        gpu=train_resources("gpu"),
        devices=train_resources("devices"),
        runtime=train_resources("runtime"),
        mem_mb=train_resources("mem_mb"),
    log:
        log_path("train", "{run}"),
    shell:
        # A checkpoint older than any input was trained on other inputs (a new config or new token
        # arrays): start over. A newer one is this job's own, left by a kill or preemption: resume.
        "if [ -e {params.checkpoint} ] && [ -n \"$(find {input.config} {input.train_tokens} {input.valid_tokens}"
        " -newer {params.checkpoint})\" ]; then echo \"removing stale {params.checkpoint}\" > {log};"
        " rm -f {params.checkpoint}; fi;"
        " OMP_NUM_THREADS={threads} tinylm train --config {input.config} --out-dir {params.out_dir}"
        " --checkpoint-dir {params.checkpoint_dir} >> {log} 2>&1"


rule evaluate:
    input:
        model=run_files("{run}")["model"],
        tokens=lambda w: planned_run(w.run).config.data.valid_tokens,
    output:
        run_files("{run}")["eval"],
    params:
        max_tokens=lambda w: f"--max-tokens {config['evaluate']['max_tokens']}"
        if config["evaluate"]["max_tokens"] else "",
    threads: config["threads"]["train"]
    log:
        log_path("evaluate", "{run}"),
    shell:
        "OMP_NUM_THREADS={threads} tinylm evaluate --checkpoint {input.model} --tokens {input.tokens}"
        " --out {output} {params.max_tokens} > {log} 2>&1"


# One round of a learning-rate sweep's refinement (tinylm.pipeline.plan.RateSweep): from the sweep's
# runs so far, the rate to add next, or none. Round k reads the runs the rounds before it added, so
# the sweep grows one run at a time while other sweeps and sections go on.
checkpoint refine_rates:
    input:
        runs=refine_round_runs,
    output:
        f"{RESULTS}/refine/{{sweep}}/round-{{round}}.json",
    params:
        args=refine_arguments,
    wildcard_constraints:
        sweep="|".join(map(re.escape, PLAN.rate_sweeps)) or "(?!)",
        round=r"\d+",
    log:
        log_path("refine_rates", "{sweep}-{round}"),
    localrule: True
    shell:
        "tinylm refine-rates {params.args} --out {output} > {log} 2>&1"


checkpoint max_batch:
    input:
        run_config_path(BASELINE_RUN),
    output:
        MAX_BATCH_JSON,
    params:
        budget=lambda w: f"--cpu-memory-budget-mb {PLAN.probe['cpu_memory_budget_mb']}",
        limit=lambda w: f"--max-batch {PLAN.probe['max_batch']}",
    threads: config["threads"]["train"]
    resources:
        gpu=config["resources"]["train"]["gpu"],
        runtime=30,
    log:
        log_path("max_batch", "batch_size"),
    shell:
        "OMP_NUM_THREADS={threads} tinylm max-batch --config {input} --out {output}"
        " {params.budget} {params.limit} > {log} 2>&1"


rule generate_text:
    input:
        unpack(generation_inputs),
    output:
        generate_output("{group}", "{setting}"),
    params:
        run_dirs=lambda w, input: shlex.join(folders(input.summaries)),
        settings=sampling_options,
        prompt=shlex.quote(config["generate"]["prompt"]),
        max_new_tokens=config["generate"]["max_new_tokens"],
    wildcard_constraints:
        group="|".join(map(re.escape, GENERATIONS)),
    threads: config["threads"]["train"]
    log:
        log_path("generate_text", "{group}-{setting}"),
    shell:
        "OMP_NUM_THREADS={threads} tinylm generate --run-dir {params.run_dirs} --prompt {params.prompt}"
        " {params.settings} --max-new-tokens {params.max_new_tokens} --out {output} > {log} 2>&1"
