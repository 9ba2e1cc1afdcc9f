# Report rules: one per section of the plan (`report_<section>`), writing
# <results>/report/<section>/section.md plus the figures (PNG + SVG) and tables (CSV + Markdown) of
# its kind (tinylm.report.KINDS), and `report_index` assembling <results>/report/README.md.
#
# Caching: a section depends on its runs' (and their replicas') metrics, summary and config files
# (never model.pt) and on the report code itself, so editing plotting code redraws every section
# without retraining, and retraining one run redraws only the sections that show it.
from tinylm.files import write_json_atomic
from tinylm.pipeline.plan_command import plan_json


report: "../report/workflow.rst"


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
            out_dir=lambda w, output: os.path.dirname(output[0]),  # the folder of section.md
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
        all_refinement_files,
    log:
        log_path("report", "plan"),
    localrule: True
    run:
        write_json_atomic(output[0], params.plan)
        Path(log[0]).write_text(f"wrote {output[0]}\n")


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
    params:
        # The folder of the run folders: the plan names the runs in it.
        runs_dir=lambda w, input: os.path.dirname(os.path.dirname(input.summaries[0])),
    log:
        log_path("report", "index"),
    localrule: True
    shell:
        "tinylm report index --out {output.index} --sections {input.sections} --plan {input.plan}"
        " --runs-dir {params.runs_dir} > {log} 2>&1"
