# Report rules: one per section of the plan (`report_<section>`), writing
# results/report/<section>/section.md plus the figures (PNG + SVG) and tables (CSV + Markdown) of
# its kind (tinylm.report.KINDS), and `report_index` assembling results/report/README.md.
#
# Caching: a section depends on its runs' metrics, summary and config files (never model.pt) and on
# the report code itself, so editing plotting code redraws every section without retraining, and
# retraining one run redraws only the sections that show it.
import tinylm.report
from tinylm.pipeline.plan_command import plan_json
from tinylm.files import write_json_atomic
from tinylm.report import KINDS


report: "../report/workflow.rst"


REPORT_CODE = sorted(str(path) for path in Path(tinylm.report.__file__).parent.glob("*.py"))


def report_outputs(name):
    """Every file `tinylm report` writes for the section; PNGs and CSVs also go into the HTML report."""
    planned, folder = PLAN.sections[name], section_dir(name)
    # A caption of the section's own, else its kind's (an ablation added to the config has none).
    own = Path(workflow.basedir, "workflow/report", f"{name}.rst").is_file()
    caption = f"../report/{name if own else planned.kind}.rst"
    def entry(path, subcategory, labels):
        return report(path, caption=caption, category=planned.title, subcategory=subcategory, labels=labels)
    files = [entry(f"{folder}/section.md", "Text", {"file": "section.md", "kind": "text"})]
    for stem in KINDS[planned.kind].figures:
        files += [entry(f"{folder}/{stem}.png", "Figures", {"file": stem, "kind": "figure"}), f"{folder}/{stem}.svg"]
    for stem in KINDS[planned.kind].tables:
        files += [entry(f"{folder}/{stem}.csv", "Tables", {"file": stem, "kind": "table"}), f"{folder}/{stem}.md"]
    return files


def file_inputs(name):
    """{tinylm report option: input file} of the section's kind."""
    planned = PLAN.sections[name]
    files = {"tokenizer_report": TOKENIZER_REPORT["json"], "max_batch": MAX_BATCH_JSON}
    if planned.generation:
        files["generate"] = generate_output(planned.generation.group, planned.generation.main)
        files["sampling_grid"] = generate_output(planned.generation.group, "grid")
        # The text the sampled runs trained on: which generated words are real words of it.
        files["train_text"] = download_path(planned.generation.group, "train")
    return {option: files[option] for option in KINDS[planned.kind].inputs}


def report_inputs(name):
    def inputs(wildcards):
        runs = section_run_files(name) if KINDS[PLAN.sections[name].kind].runs else []
        return {"code": REPORT_CODE, "runs": runs, **file_inputs(name)}
    return inputs


def report_arguments(name):
    """The section's `tinylm report` options: title, its runs by label, baseline, colours, JSON inputs."""
    def arguments(wildcards, input):
        planned = section(name)
        args = ["--title", planned.title, "--description", planned.description]
        if KINDS[planned.kind].runs:
            for run, label in planned.runs.items():
                args += ["--run", label, run_dir(run)]
            if planned.baseline:
                args += ["--baseline", planned.runs[planned.baseline]]
            args += ["--colour-order", *COLOUR_ORDER]
        for option in file_inputs(name):
            args += [f"--{option.replace('_', '-')}", input[option]]
        return shlex.join(args)
    return arguments


for _name, _planned in PLAN.sections.items():
    rule:
        name:
            f"report_{_name}"
        input:
            unpack(report_inputs(_name)),
        output:
            report_outputs(_name),
        params:
            kind=_planned.kind,
            out_dir=section_dir(_name),
            args=report_arguments(_name),
        log:
            log_path("report", _name),
        localrule: True
        shell:
            "tinylm report {params.kind} --out-dir {params.out_dir} {params.args} > {log} 2>&1"


rule write_plan:
    output:
        PLAN_JSON,
    params:
        # Rewritten only when the plan changes (the `params` trigger), e.g. a run's settings.
        plan=lambda w: plan_json(full_plan()),
    input:
        PROBE_FILES,
    log:
        log_path("report", "plan"),
    localrule: True
    run:
        write_json_atomic(output[0], params.plan)
        Path(log[0]).write_text(f"wrote {output[0]}\n")


def all_summaries(wildcards):
    return sorted({f for name in PLAN.sections for f in section_run_files(name, kinds=("summary",))})


rule report_index:
    input:
        sections=[f"{section_dir(name)}/section.md" for name in PLAN.sections],
        plan=PLAN_JSON,
        summaries=all_summaries,
        code=REPORT_CODE,
    output:
        index=REPORT_INDEX,
        runs=report(f"{RESULTS}/report/runs.csv", caption="../report/runs.rst", category="Runs",
                    labels={"file": "runs", "kind": "table"}),
        tables=[f"{RESULTS}/report/runs.md", f"{RESULTS}/report/environments.csv", f"{RESULTS}/report/environments.md"],
    log:
        log_path("report", "index"),
    localrule: True
    shell:
        "tinylm report index --out {output.index} --sections {input.sections} --plan {input.plan}"
        " --runs-dir {RESULTS}/runs > {log} 2>&1"
