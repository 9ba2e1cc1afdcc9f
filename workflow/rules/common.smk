"""Helpers shared by every rule file: paths, the run list, and per-run configs.

Exported for the report rules (workflow/rules/report.smk) and the Snakefile targets:

    SECTIONS                     report sections in order: tokenizer, lr_sweep, batch_size, generate,
                                 no_rmsnorm, post_norm, nope, silu, owt
    BASELINE_RUN                 "baseline", the run every comparison is made against
    section_runs(section)        {run name: human label} in plot order, e.g. {"lr_sweep-lr=1e-2":
                                 "lr=1e-2", "baseline": "lr=3e-3", ...}. Comparison sections include
                                 the baseline (label "baseline"). "batch_size" reads the max-batch
                                 checkpoint, so call it only inside input/params functions.
                                 "tokenizer" has no runs; "generate" lists the runs it picks from.
    all_static_runs()            every run name known before the batch-size probe, baseline first
    run_dir(run)                 "results/runs/<run>"
    run_files(run)               {"metrics", "summary", "config", "model", "eval"} paths of one run
    section_run_files(section, kinds=("metrics", "summary", "config"))
                                 flat list of those files for every run of the section (input function
                                 helper; batch_size triggers the checkpoint)
    section_dir(section)         "results/report/<section>"; each report rule writes section.md there
    REPORT_INDEX                 "results/report/README.md"
    TOKENIZER_REPORT             {"json": ..., "md": ...} from `tinylm tokenizer-report`
    MAX_BATCH_JSON               `tinylm max-batch` output read by the batch_size section
    generate_outputs(group)      {label: JSON path} of `tinylm generate`; groups "tinystories" (labels
                                 GENERATE_MAIN and GENERATE_GRID) and "owt" (GENERATE_MAIN only)
    GENERATE_MAIN                label of the main sampling setting (all seeds), e.g. "T=0.8_p=0.95"
    GENERATE_GRID                "grid": every configured temperature x top-p (the settings table)

Runs are the `baseline` (config key `baseline`) plus, per experiment, the baseline with overrides and
an optional sweep. Two runs with the same content are one run: the first name wins, so the lr sweep
at the baseline's rate (and the batch-size run at the baseline's batch and budget) is the run
`baseline` itself, with that section's label.
"""
import copy
import itertools
import json
import math
import os
import re
import sys
from pathlib import Path

from tinylm.config import RunConfig
from tinylm.report import TITLES

# Rules call `tinylm ...`: make that the CLI of the Python running Snakemake, venv activated or not.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

RESULTS = "results"
SECTIONS = tuple(TITLES)
RUN_SECTIONS = ("lr_sweep", "no_rmsnorm", "post_norm", "nope", "silu", "owt")  # overrides + sweeps
BASELINE_RUN = "baseline"
REPORT_INDEX = f"{RESULTS}/report/README.md"
TOKENIZER_REPORT = {"json": f"{RESULTS}/tokenizers/report.json", "md": f"{RESULTS}/tokenizers/report.md"}
MAX_BATCH_JSON = f"{RESULTS}/max_batch/batch_size.json"
RUN_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._=+-]*"
BATCH_RUN = re.compile(r"^batch_size-batch=(\d+)$")
# Short names for swept keys in run names and labels; other keys use their last part.
SHORT_KEYS = {"optimizer.lr": "lr", "training.batch_size": "batch"}


# ---- paths -------------------------------------------------------------------------------------

def log_path(rule_name, name):
    return f"{RESULTS}/logs/{rule_name}/{name}.log"


def download_path(corpus, split):
    return f"{RESULTS}/downloads/{corpus}/{split}.txt"


def tokenizer_dir(tok):
    return f"{RESULTS}/tokenizers/{tok}"


TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens.json", "stats.json")


def tokenizer_files(tok):
    return [f"{tokenizer_dir(tok)}/{name}" for name in TOKENIZER_FILES]


def tokens_path(tok, corpus, split):
    return f"{RESULTS}/tokens/{tok}/{corpus}/{split}.npy"


def run_config_path(run):
    return f"{RESULTS}/configs/{run}.json"


def run_dir(run):
    return f"{RESULTS}/runs/{run}"


def checkpoint_dir(run):
    return f"{RESULTS}/checkpoints/{run}"


def run_files(run):
    d = run_dir(run)
    return {"metrics": f"{d}/metrics.jsonl", "summary": f"{d}/summary.json", "config": f"{d}/config.json",
            "model": f"{d}/model.pt", "eval": f"{d}/eval.json"}


def section_dir(section):
    return f"{RESULTS}/report/{section}"


def resolve_source(source):
    """URLs stay as they are; local paths are relative to the repository (the Snakefile's folder)."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", source):
        return source
    return os.path.normpath(os.path.join(workflow.basedir, os.path.expanduser(source)))


# ---- values in run names -----------------------------------------------------------------------

def format_value(value):
    """Compact, path-safe text for a config value: 3e-3, 0.5, 64, none, swiglu."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and (abs(value) < 0.1 or abs(value) >= 1e5):
            mantissa, exponent = f"{value:.6e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    return str(value)


def setting_text(key, value):
    return f"{SHORT_KEYS.get(key, key.rsplit('.', 1)[-1])}={format_value(value)}"


def dotted_get(data, dotted):
    node = data
    for part in dotted.split("."):
        node = node[part]
    return node


# ---- run configs -------------------------------------------------------------------------------

def config_error(where, error):
    return ValueError(f"config {where}: {error}")


def baseline_dict():
    """The baseline RunConfig as a dict, data paths and vocabulary filled in from its tokenizer."""
    base = config["baseline"]
    return make_run(BASELINE_RUN, base["tokenizer"], base["corpus"], {}, "baseline").to_dict()


def make_run(name, tok, corpus, overrides, where):
    base = config["baseline"]
    if tok not in config["tokenizers"]:
        raise config_error(where, f"tokenizer {tok!r} is not one of config tokenizers ({', '.join(config['tokenizers'])})")
    if corpus not in config["corpora"]:
        raise config_error(where, f"corpus {corpus!r} is not one of config corpora ({', '.join(config['corpora'])})")
    data = {
        "name": name,
        "model": dict(base.get("model", {}), vocab_size=config["tokenizers"][tok]["vocab_size"]),
        "optimizer": base.get("optimizer", {}),
        "training": base.get("training", {}),
        "data": {"train_tokens": tokens_path(tok, corpus, "train"),
                 "valid_tokens": tokens_path(tok, corpus, "valid"),
                 "tokenizer_dir": tokenizer_dir(tok)},
    }
    try:
        return RunConfig.from_dict(copy.deepcopy(data)).with_overrides(overrides)
    except ValueError as error:
        raise config_error(where, error) from None


def content_key(run_config):
    data = run_config.to_dict()
    data.pop("name")
    return json.dumps(data, sort_keys=True)


def experiment_runs(section):
    """[(name, label, RunConfig)] of one overrides-and-sweep experiment, before de-duplication."""
    exp = config["experiments"][section]
    base = config["baseline"]
    tok, corpus = exp.get("tokenizer", base["tokenizer"]), exp.get("corpus", base["corpus"])
    overrides = dict(exp.get("overrides", {}))
    prefix = exp.get("label") or ", ".join(setting_text(k, v) for k, v in overrides.items())
    sweep = exp.get("sweep", {})
    baseline = baseline_dict()
    runs = []
    for values in itertools.product(*sweep.values()):
        # The value "baseline" in a sweep stands for the baseline's own setting.
        point = {k: (dotted_get(baseline, k) if v == "baseline" else v) for k, v in zip(sweep, values)}
        settings = [setting_text(k, v) for k, v in point.items()]
        swept = "-".join(settings)
        name = f"{section}-{swept}" if swept else section
        label = " ".join([prefix] * bool(prefix) + settings) or section
        where = f"experiments.{section}" + (f" ({swept})" if swept else "")
        runs.append((name, label, make_run(name, tok, corpus, {**overrides, **point}, where)))
    return runs


def build_static_runs():
    """All runs known before training: {name: RunConfig} and {section: {name: label}}."""
    runs = {BASELINE_RUN: RunConfig.from_dict(baseline_dict())}
    by_content = {content_key(runs[BASELINE_RUN]): BASELINE_RUN}
    sections = {}
    for section in RUN_SECTIONS:
        labels = {}
        for name, label, run_config in experiment_runs(section):
            name = by_content.setdefault(content_key(run_config), name)
            runs.setdefault(name, run_config)
            labels[name] = label
        if config["experiments"][section].get("compare_baseline", True):
            labels.setdefault(BASELINE_RUN, "baseline")
        sections[section] = labels
    return runs, sections, by_content


STATIC_RUNS, STATIC_SECTIONS, STATIC_BY_CONTENT = build_static_runs()


# ---- batch-size section ------------------------------------------------------------------------

def batch_size_run(batch):
    """The baseline at `batch` with the section's token budget (in whole steps), scaled lr and
    intervals fixed in tokens."""
    exp = config["experiments"]["batch_size"]
    base = STATIC_RUNS[BASELINE_RUN]
    scale = batch / base.training.batch_size
    exponent = {"constant": 0.0, "sqrt": 0.5, "linear": 1.0}[exp["lr_scaling"]]
    lr = min(base.optimizer.lr * scale ** exponent, exp.get("max_lr") or math.inf)
    # Intervals count steps; keep them fixed in tokens so every batch size is logged,
    # evaluated and warmed up over the same share of the budget.
    per_tokens = lambda steps: max(1, round(steps / scale))
    steps = math.ceil(exp["max_tokens"] / (batch * base.model.context_length))
    overrides = {
        "training.batch_size": batch, "training.max_steps": steps, "training.max_tokens": None,
        "optimizer.lr": lr,
        "optimizer.warmup_steps": min(per_tokens(base.optimizer.warmup_steps), steps // 2),
        "training.eval_interval": per_tokens(base.training.eval_interval),
        "training.log_interval": per_tokens(base.training.log_interval),
        "training.checkpoint_interval": per_tokens(base.training.checkpoint_interval),
    }
    base_conf = config["baseline"]
    return make_run(f"batch_size-batch={batch}", base_conf["tokenizer"], base_conf["corpus"], overrides,
                    f"experiments.batch_size (batch={batch})")


def batch_sizes():
    """Configured batch sizes up to the largest that fits, plus that largest (reads the checkpoint)."""
    exp = config["experiments"]["batch_size"]
    sizes = sorted(set(exp["batch_sizes"]))
    if exp["find_max"]:
        with open(checkpoints.max_batch.get().output[0]) as f:
            largest = json.load(f)["largest_batch"]
        sizes = sorted({b for b in sizes if b <= largest} | {largest})
    return sizes


# ---- exported lookups --------------------------------------------------------------------------

def run_config(run):
    if run in STATIC_RUNS:
        return STATIC_RUNS[run]
    match = BATCH_RUN.match(run)
    if match:
        return batch_size_run(int(match.group(1)))
    raise ValueError(f"unknown run {run!r}: not the baseline, an experiment run or a batch_size run")


def section_runs(section):
    if section in STATIC_SECTIONS:
        return dict(STATIC_SECTIONS[section])
    if section == "batch_size":
        # A batch-size run identical to an earlier run (the baseline's batch and budget) is that run.
        return {STATIC_BY_CONTENT.get(content_key(batch_size_run(b)), f"batch_size-batch={b}"): f"batch={b}"
                for b in batch_sizes()}
    if section == "generate":  # the TinyStories runs the best one is picked from
        runs = dict(STATIC_SECTIONS["lr_sweep"])
        runs.setdefault(BASELINE_RUN, "baseline")
        return runs
    if section == "tokenizer":
        return {}
    raise ValueError(f"unknown report section {section!r}")


def section_run_files(section, kinds=("metrics", "summary", "config")):
    return [run_files(run)[kind] for run in section_runs(section) for kind in kinds]


def all_static_runs():
    return list(STATIC_RUNS)


# ---- generation --------------------------------------------------------------------------------

def sampling_label(setting):
    return f"T={format_value(float(setting['temperature']))}_p={format_value(float(setting['top_p']))}"


GENERATE_MAIN = sampling_label(config["generate"]["main"])
GENERATE_GRID = "grid"
GENERATE_GROUPS = {"tinystories": "generate", "owt": "owt"}  # group -> section whose runs it picks from


def sampling_settings(group):
    """{label: {"temperatures", "top_ps", "seeds"}}: the main setting, and for TinyStories the grid."""
    gen = config["generate"]
    settings = {GENERATE_MAIN: {"temperatures": [gen["main"]["temperature"]], "top_ps": [gen["main"]["top_p"]],
                                "seeds": gen["seeds"]}}
    if group == "tinystories":
        settings[GENERATE_GRID] = gen["grid"]
    return settings


def generate_outputs(group):
    return {label: f"{RESULTS}/generate/{group}/{label}.json" for label in sampling_settings(group)}


def generate_runs(group):
    runs = section_runs(GENERATE_GROUPS[group])
    if group == "owt":
        runs.pop(BASELINE_RUN, None)  # the OWT sample comes from the OWT run, not the TinyStories baseline
    return list(runs)
