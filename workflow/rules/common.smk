"""Paths, and the glue between the experiment plan (tinylm.pipeline.plan) and the rule files.

    PLAN                  the plan known before the max-batch probe: PLAN.runs, PLAN.sections
    full_plan()           the plan with the probe's batch sizes (reads the max-batch checkpoint, so
                          call it only inside input/params functions)
    planned_run(run)      one run of the plan (tinylm.pipeline.plan.PlannedRun)
    probe_input           input function: the probe's output, for rules of batch-size runs
    section(name)         one report section (tinylm.pipeline.plan.PlannedSection), the probe's answer
                          included for batch_size
    GENERATIONS           {group: PlannedSamples}: the text samples each section draws
"""
import re
import os
import sys
from functools import lru_cache
from pathlib import Path

from tinylm.config import RUN_NAME_PATTERN
from tinylm.files import read_json
from tinylm.pipeline.paths import RESULTS, tokenizer_dir, tokens_path
from tinylm.pipeline.plan import BASELINE_RUN, build_plan
from tinylm.training.outputs import FILES, RunFolder

# Rules call `tinylm ...`: make that the CLI of the Python running Snakemake, venv activated or not.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

REPORT_INDEX = f"{RESULTS}/report/README.md"
TOKENIZER_REPORT = {"json": f"{RESULTS}/tokenizers/report.json", "md": f"{RESULTS}/tokenizers/report.md"}
MAX_BATCH_JSON = f"{RESULTS}/max_batch/batch_size.json"
PLAN_JSON = f"{RESULTS}/plan.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens.json", "stats.json")


# ---- paths -------------------------------------------------------------------------------------

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


# ---- the plan ----------------------------------------------------------------------------------

PLAN = build_plan(config)
GENERATIONS = {s.generation.group: s.generation for s in PLAN.sections.values() if s.generation}
# Every run but the batch-size ones, in one fixed order: a run has the same colour in every section.
COLOUR_ORDER = [name for name, run in PLAN.runs.items() if run.section != "batch_size"]


@lru_cache
def _plan_with_largest_batch(largest):
    return build_plan(config, largest_batch=largest)


def full_plan():
    if PLAN.probe is None:
        return PLAN
    probe = read_json(checkpoints.max_batch.get().output[0], "max-batch probe output", expect=dict)
    return _plan_with_largest_batch(probe["largest_batch"])


def from_probe(run):
    """Whether the run is known only from the probe's answer (a batch-size run)."""
    return run not in PLAN.runs or PLAN.runs[run].section == "batch_size"


PROBE_FILES = [MAX_BATCH_JSON] if PLAN.probe else []  # inputs of rules whose params read the probe


def probe_input(wildcards):
    """The probe's output, for the rules of a batch-size run."""
    return PROBE_FILES if from_probe(wildcards.run) else []


def planned_run(run):
    return full_plan().run(run) if from_probe(run) else PLAN.runs[run]


def section(name):
    planned = PLAN.sections[name]
    return full_plan().sections[name] if planned.pending_probe else planned


def section_run_files(name, kinds=("metrics", "summary", "config")):
    return [run_files(run)[kind] for run in section(name).runs for kind in kinds]
