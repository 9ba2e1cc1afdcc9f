"""Paths, the glue between the experiment plan (tinylm.pipeline.plan) and the rules, and every
function the rule files call (they hold rules only).

    PLAN                  the plan known before the max-batch probe and any refinement round:
                          PLAN.runs, PLAN.sections, PLAN.rate_sweeps
    full_plan()           the plan with the probe's batch sizes and every refinement (reads their
                          checkpoints, so call it only inside input/params functions)
    planned_run(run)      one run of the plan (tinylm.pipeline.plan.PlannedRun)
    probe_input           input function: the probe's output, for rules of batch-size runs
    refinement_input      input function: the refinement rounds that added a run, for its rules
    section(name)         one report section (tinylm.pipeline.plan.PlannedSection), with the probe's
                          answer for batch_size and every rate refinement added to its sweeps; its
                          runs' replicas at further seeds (config `seeds`) are trained, evaluated and
                          handed to its report beside them
    GENERATIONS           {group: PlannedSamples}: the text samples each section draws

Folders handed to a command are derived inside the rule from its own input or output files (as
`params` functions of `input`/`output`), so that they follow the files wherever an executor puts them.
"""
import json
import os
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path

import tinylm.report
from tinylm.config import RUN_NAME_PATTERN
from tinylm.files import read_json
from tinylm.pipeline import paths
from tinylm.pipeline.plan import BASELINE_RUN, build_plan
from tinylm.report import KINDS
from tinylm.training.outputs import FILES, RunFolder

# Rules call `tinylm ...`: make that the CLI of the Python running Snakemake, venv activated or not.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

# This config's results folder: results/ for config/config.yaml, results/<name>/ for config/<name>.yaml
# (config key `results_dir`), so that switching configs overwrites nothing.
RESULTS = config["results_dir"]
REPORT_INDEX = f"{RESULTS}/report/README.md"
TOKENIZER_REPORT = {"json": f"{RESULTS}/tokenizers/report.json", "md": f"{RESULTS}/tokenizers/report.md"}
MAX_BATCH_JSON = f"{RESULTS}/max_batch/batch_size.json"
PLAN_JSON = f"{RESULTS}/plan.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens.json", "stats.json")
# A section depends on the report code itself: editing plotting code redraws without retraining.
REPORT_CODE = sorted(str(path) for path in Path(tinylm.report.__file__).parent.rglob("*.py"))


# ---- paths -------------------------------------------------------------------------------------

def tokenizer_dir(tok):
    return paths.tokenizer_dir(RESULTS, tok)


def tokens_path(tok, corpus, split):
    return paths.tokens_path(RESULTS, tok, corpus, split)


def log_path(rule_name, name):
    return f"{RESULTS}/logs/{rule_name}/{name}.log"


def download_path(corpus, split):
    return f"{RESULTS}/downloads/{corpus}/{split}.txt"


def tokenizer_files(tok):
    return [f"{tokenizer_dir(tok)}/{name}" for name in TOKENIZER_FILES]


def run_config_path(run):
    return f"{RESULTS}/configs/{run}.json"


def run_dir(run):
    return f"{RESULTS}/runs/{run}"


def checkpoint_dir(run):
    return f"{RESULTS}/checkpoints/{run}"


def run_files(run):
    """{kind: path} of the run's folder (tinylm.training.outputs)."""
    return {kind: str(RunFolder(run_dir(run)).file(kind)) for kind in FILES}


def section_dir(name):
    return f"{RESULTS}/report/{name}"


def generate_output(group, setting):
    return f"{RESULTS}/generate/{group}/{setting}.json"


def export_dir(group):
    return f"{RESULTS}/export/{group}"


def resolve_source(source):
    """URLs stay as they are; local paths are relative to the repository (the Snakefile's folder)."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", source):
        return source
    return os.path.normpath(os.path.join(workflow.basedir, os.path.expanduser(source)))


def folders(files):
    """The folders of `files`, each once, in order: the run folders of a list of run files."""
    return list(dict.fromkeys(os.path.dirname(f) for f in files))


# ---- the plan ----------------------------------------------------------------------------------

PLAN = build_plan(config)
GENERATIONS = {s.generation.group: s.generation for s in PLAN.sections.values() if s.generation}
# Every run but the batch-size ones, in one fixed order: a run has the same colour in every section
# (its replicas take its colour).
COLOUR_ORDER = [name for name, run in PLAN.runs.items() if run.section != "batch_size" and not run.replica_of]


@lru_cache
def _plan(largest, refined):
    """The plan with the probe's answer `largest` and `refined`: ((sweep key, rates added, complete), ...)."""
    return build_plan(config, largest_batch=largest, refinements={key: (rates, done) for key, rates, done in refined})


def probe_answer():
    probe = read_json(checkpoints.max_batch.get().output[0], "max-batch probe output", expect=dict)
    return probe["largest_batch"]


def refinement_rounds(key, until_run=None, rounds=None):
    """(the round files of sweep `key` read, the rates they added, whether it is done), reading each
    round's checkpoint in turn: every round; or up to the one that added the run `until_run` (at any
    seed); or the first `rounds`. A round's decision needs the runs of the rounds before it only, so
    reading stops there: a run never waits for the round its own result decides."""
    sweep = PLAN.rate_sweeps[key]
    files, rates = [], []
    for round_ in range(sweep.max_refinements if rounds is None else rounds):
        files.append(checkpoints.refine_rates.get(sweep=key, round=str(round_)).output[0])
        rate = read_json(files[-1], "refinement round", expect=dict)["next"]
        if rate is None:
            return files, tuple(rates), True
        rates.append(rate)
        if until_run is not None and until_run in PLAN.at_seeds(sweep.run_name(rate)):
            return files, tuple(rates), False
    return files, tuple(rates), rounds is None


def plan_with(probe=False, refined=None):
    """The plan with the probe's answer (when asked) and `refined`: {sweep key: (rates added, done)}."""
    largest = probe_answer() if probe and PLAN.probe is not None else None
    return _plan(largest, tuple((key, rates, done) for key, (rates, done) in sorted((refined or {}).items())))


def full_plan():
    refined = {key: refinement_rounds(key)[1:] for key in PLAN.rate_sweeps}
    return plan_with(probe=True, refined=refined)


def from_probe(run):
    """Whether the run is known only from the probe's answer (a batch-size run)."""
    if run in PLAN.runs:
        return PLAN.runs[run].section == "batch_size"
    return PLAN.sweep_of_run(run) is None


PROBE_FILES = [MAX_BATCH_JSON] if PLAN.probe else []  # inputs of rules whose params read the probe


def probe_input(wildcards):
    """The probe's output, for the rules of a batch-size run."""
    return PROBE_FILES if from_probe(wildcards.run) else []


def refinement_input(wildcards):
    """The refinement rounds that led to a run refinement added (none for any other run)."""
    sweep = None if wildcards.run in PLAN.runs else PLAN.sweep_of_run(wildcards.run)
    return refinement_rounds(sweep.key, until_run=wildcards.run)[0] if sweep else []


def planned_run(run):
    if run in PLAN.runs and not from_probe(run):
        return PLAN.runs[run]
    sweep = PLAN.sweep_of_run(run)
    if sweep is not None and run not in PLAN.runs:
        return plan_with(refined={sweep.key: refinement_rounds(sweep.key, until_run=run)[1:]}).run(run)
    return plan_with(probe=True).run(run)


def section(name):
    planned = PLAN.sections[name]
    if not (planned.pending_probe or PLAN.pending_refinement(name)):
        return planned
    refined = {key: refinement_rounds(key)[1:] for key in planned.rate_sweeps}
    return plan_with(probe=planned.pending_probe, refined=refined).sections[name]


def all_refinement_files(wildcards):
    """Every refinement round's file: for rules whose params read the whole plan."""
    return [f for key in PLAN.rate_sweeps for f in refinement_rounds(key)[0]]


def refine_round_runs(wildcards):
    """The run files (metrics, summary, config) of a sweep's runs before round `wildcards.round`."""
    rounds = int(wildcards.round)
    _, rates, _ = refinement_rounds(wildcards.sweep, rounds=rounds)
    sweep = plan_with(refined={wildcards.sweep: (rates, False)}).rate_sweeps[wildcards.sweep]
    return [run_files(run)[kind] for run in sweep.runs.values() for kind in ("metrics", "summary", "config")]


def refine_arguments(wildcards, input):
    """`tinylm refine-rates` options: the sweep's runs (labelled by their rate), its bound and step."""
    sweep = PLAN.rate_sweeps[wildcards.sweep]
    args = []
    for folder in folders(input.runs):
        args += ["--run", os.path.basename(folder), folder]
    return shlex.join(args + ["--refine-to", str(sweep.refine_to), "--step", str(sweep.step)])


def replica_runs(planned):
    """The replicas of a section's runs, in the order of its runs, then of the seeds."""
    return [replica for _, replica in planned.replica_labels()]


def section_run_files(name, kinds=("metrics", "summary", "config"), replicas=False):
    """The files of the section's runs, each run's together in the section's order; with `replicas`,
    of their replicas instead."""
    planned = section(name)
    runs = replica_runs(planned) if replicas else planned.runs
    return [run_files(run)[kind] for run in runs for kind in kinds]


def section_target(name):
    """The section's report page, plus the evaluation of every run it shows, replicas included: the
    runs planned up front at once, and those only the probe or refinement adds once they are known."""
    up_front = PLAN.sections[name]
    known = [] if up_front.pending_probe else [*up_front.runs, *replica_runs(up_front)]  # the probe may drop some

    def planned(wildcards):
        return [f"{section_dir(name)}/section.md"] + [run_files(run)["eval"] for run in known]

    def added(wildcards):
        now = section(name)
        return [run_files(run)["eval"] for run in [*now.runs, *replica_runs(now)] if run not in known]
    return [planned, added]


# ---- data (data.smk) ---------------------------------------------------------------------------

def download_source(wildcards):
    """What the file is: its source, checksum and size cap."""
    spec = config["corpora"][wildcards.corpus][wildcards.split]
    args = [resolve_source(spec["source"])]
    if spec.get("sha256"):
        args += ["--sha256", spec["sha256"]]
    if spec.get("max_bytes"):
        args += ["--max-bytes", str(spec["max_bytes"])]
    return shlex.join(args)


def download_fetch_options(wildcards, output):
    """Where and how the file is fetched: the cache, retries and mirror. A function of `output`, which
    the `params` rerun trigger leaves out (as derived from a file): a new mirror refetches nothing."""
    args = ["--cache-dir", config["download"]["cache_dir"], "--retries", str(config["download"]["retries"])]
    if config.get("mirror"):
        args += ["--mirror", resolve_source(config["mirror"])]
    return shlex.join(args)


# ---- training (train.smk) ----------------------------------------------------------------------

def train_resources(key):
    """A `resources` callable: the run's resources from the plan (config `resources.train`, the
    experiment's `resources` over it, GPUs multiplied by `training.devices`)."""
    return lambda wildcards: planned_run(wildcards.run).resources[key]


def generation_inputs(wildcards):
    """{summaries, models} of the runs a generation group samples from, in the plan's order."""
    runs = GENERATIONS[wildcards.group].runs
    return {"summaries": [run_files(run)["summary"] for run in runs], "models": [run_files(run)["model"] for run in runs]}


def sampling_options(wildcards):
    settings = GENERATIONS[wildcards.group].settings[wildcards.setting]
    return " ".join(f"--{option} " + " ".join(str(v) for v in settings[key])
                    for option, key in (("temperature", "temperatures"), ("top-p", "top_ps"), ("seeds", "seeds")))


# ---- report (report.smk) -----------------------------------------------------------------------

def report_outputs(name):
    """Every file `tinylm report` writes for the section, its page first; PNGs and CSVs also go into
    the HTML report."""
    planned, folder = PLAN.sections[name], section_dir(name)
    # A caption of the section's own, else its kind's (an ablation added to the config has none).
    own = Path(workflow.basedir, "workflow/report", f"{name}.rst").is_file()
    caption = f"../report/{name if own else planned.kind}.rst"
    def entry(path, subcategory, labels):
        return report(path, caption=caption, category=planned.title, subcategory=subcategory, labels=labels)
    files = [entry(f"{folder}/section.md", "Text", {"file": "section.md", "kind": "text"})]
    for stem in KINDS[planned.kind].figures:
        files += [entry(f"{folder}/{stem}.png", "Figures", {"file": stem, "kind": "figure"}), f"{folder}/{stem}.svg"]
    for stem in KINDS[planned.kind].tables_for(len(planned.rate_sweeps)):
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
        from_runs = KINDS[PLAN.sections[name].kind].runs
        runs = section_run_files(name) if from_runs else []
        replicas = section_run_files(name, replicas=True) if from_runs else []
        return {"code": REPORT_CODE, "runs": runs, "replicas": replicas, **file_inputs(name)}
    return inputs


def report_arguments(name):
    """The section's `tinylm report` options: title, its runs and their replicas by label, baseline,
    colours, JSON inputs."""
    def arguments(wildcards, input):
        planned = section(name)
        args = ["--title", planned.title, "--description", planned.description]
        if KINDS[planned.kind].runs:
            # input.runs and input.replicas hold each run's files together, in the section's order.
            for (run, label), folder in zip(planned.runs.items(), folders(input.runs), strict=True):
                args += ["--run", label, folder]
            for (label, replica), folder in zip(planned.replica_labels(), folders(input.replicas), strict=True):
                args += ["--replica", label, folder]
            if planned.baseline:
                args += ["--baseline", planned.runs[planned.baseline]]
            if len(planned.rate_sweeps) == 1:
                args.append("--rate-sweep")
            if planned.compare_with:
                args += ["--compare-with", json.dumps(planned.compare_with)]
            args += ["--colour-order", *COLOUR_ORDER]
        for option in file_inputs(name):
            args += [f"--{option.replace('_', '-')}", input[option]]
        return shlex.join(args)
    return arguments


def all_summaries(wildcards):
    return sorted({f for name in PLAN.sections for replicas in (False, True)
                   for f in section_run_files(name, kinds=("summary",), replicas=replicas)})


# ---- export (export.smk) -----------------------------------------------------------------------

def export_inputs(wildcards):
    """The sampled runs' summary, model and config files (summaries in the plan's order), and their
    tokenizers."""
    runs = GENERATIONS[wildcards.group].runs
    files = {"summaries": [run_files(run)["summary"] for run in runs],
             "runs": [run_files(run)[kind] for run in runs for kind in ("model", "config")]}
    files["tokenizers"] = sorted({f for run in runs for f in tokenizer_files(planned_run(run).tokenizer)})
    return files
