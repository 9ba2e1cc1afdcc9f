# Report rules: one per section (`report_<section>`), writing results/report/<section>/section.md
# plus its figures (PNG + SVG) and tables (CSV + Markdown), and `report_index` assembling
# results/report/README.md. The files each section writes are listed in tinylm.report.OUTPUTS.
#
# Caching: a section depends on its runs' metrics, summary and config files (never model.pt) and on
# the report code itself, so editing plotting code redraws every section without retraining, and
# retraining one run redraws only the sections that show it.
import shlex

import tinylm.report
from tinylm.report import OUTPUTS, RUNLESS, TITLES


report: "../report/workflow.rst"


REPORT_CODE = sorted(str(path) for path in Path(tinylm.report.__file__).parent.glob("*.py"))
OWT_BASELINE_LABEL = "TinyStories baseline"  # the baseline is labelled "baseline" in common.smk


def report_outputs(section):
    """Every file `tinylm report <section>` writes; PNGs and CSVs also go into the HTML report."""
    folder, caption = section_dir(section), f"../report/{section}.rst"
    files = [report(f"{folder}/section.md", caption=caption, category=TITLES[section], subcategory="Text",
                    labels={"file": "section.md", "kind": "text"})]
    for stem in OUTPUTS[section]["figures"]:
        files.append(report(f"{folder}/{stem}.png", caption=caption, category=TITLES[section],
                            subcategory="Figures", labels={"file": stem, "kind": "figure"}))
        files.append(f"{folder}/{stem}.svg")
    for stem in OUTPUTS[section]["tables"]:
        files.append(report(f"{folder}/{stem}.csv", caption=caption, category=TITLES[section],
                            subcategory="Tables", labels={"file": stem, "kind": "table"}))
        files.append(f"{folder}/{stem}.md")
    return files


def report_labels(section):
    """{run name: label} for the section; section_runs reads the max-batch checkpoint for batch_size."""
    labels = section_runs(section)
    if section == "owt" and BASELINE_RUN in labels:
        labels[BASELINE_RUN] = OWT_BASELINE_LABEL
    return labels


def report_inputs(section):
    def inputs(wildcards):
        files = {"code": REPORT_CODE}
        if section in RUNLESS:
            files["runs"] = []  # these read the tokenizer report / generate JSON, not run curves
        else:
            files["runs"] = section_run_files(section)
        if section == "tokenizer":
            files["tokenizer_report"] = TOKENIZER_REPORT["json"]
        if section == "batch_size":
            files["max_batch"] = MAX_BATCH_JSON
        if section == "generate":
            files["generate"] = generate_outputs("tinystories")[GENERATE_MAIN]
            files["sampling_grid"] = generate_outputs("tinystories")[GENERATE_GRID]
            files["train_text"] = download_path(config["baseline"]["corpus"], "train")
        if section == "owt":
            files["generate"] = generate_outputs("owt")[GENERATE_MAIN]
            files["train_text"] = download_path(config["experiments"]["owt"].get("corpus", "owt"), "train")
        return files
    return inputs


def report_arguments(section):
    """The section's `tinylm report` options: its runs by label, baseline, colours and JSON inputs."""
    def arguments(wildcards, input):
        labels = report_labels(section) if section not in RUNLESS else {}
        args = []
        for run, label in labels.items():
            args += ["--run", label, run_dir(run)]
        # The baseline is dashed wherever it is shown beside others, except in the plain lr sweep.
        if section != "lr_sweep" and BASELINE_RUN in labels:
            args += ["--baseline", labels[BASELINE_RUN]]
        if labels:
            # Every run of the report in one fixed order: a run has the same colour in every section.
            args += ["--colour-order", *all_static_runs()]
        for option in ("tokenizer_report", "max_batch", "generate", "sampling_grid", "train_text"):
            if option in input.keys():
                args += [f"--{option.replace('_', '-')}", input[option]]
        return shlex.join(args)
    return arguments


for _section in SECTIONS:

    rule:
        name:
            f"report_{_section}"
        input:
            unpack(report_inputs(_section)),
        output:
            report_outputs(_section),
        params:
            section=_section,
            out_dir=section_dir(_section),
            args=report_arguments(_section),
        log:
            log_path("report", _section),
        localrule: True
        shell:
            "tinylm report {params.section} --out-dir {params.out_dir} {params.args} > {log} 2>&1"


rule report_index:
    input:
        sections=[f"{section_dir(section)}/section.md" for section in SECTIONS],
        code=REPORT_CODE,
    output:
        REPORT_INDEX,
    log:
        log_path("report", "index"),
    localrule: True
    shell:
        "tinylm report index --out {output} --sections {input.sections} > {log} 2>&1"

