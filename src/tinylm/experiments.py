"""The experiment plan: from a pipeline config to every run and every report section.

    config = resolve_config(["config/reference.yaml"], {"training_devices": ...})   # file(s) + schema defaults
    plan = build_plan(config)                    # runs known before the max-batch probe
    plan = build_plan(config, largest_batch=256) # ... and the batch-size runs once it has run

A plan is plain data: `plan.runs` maps run names to `PlannedRun` (its `RunConfig`, tokenizer,
corpus, resources and what it changes against the baseline), `plan.sections` maps section names to
`PlannedSection` (title, report kind, runs with their labels, generation samples). The Snakefile, the
rule files and `tinylm plan` read it; nothing parses run names.

Runs are the baseline (config key `baseline`) plus, per experiment, the baseline with overrides and an
optional sweep. Two runs with the same content are one run: the first name wins, so the lr sweep at
the baseline's rate (and the batch-size run at the baseline's batch and budget) is the run `baseline`
itself, with that section's label.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tinylm.config import RunConfig
from tinylm.loading import file_error, first_line, read_text
from tinylm.report import KINDS

SCHEMA = Path(__file__).parent / "schemas" / "config.schema.yaml"
DEFAULT_CONFIGFILE = "config/config.yaml"
RESULTS = "results"
BASELINE_RUN = "baseline"
# Short names for swept keys in run names and labels; other keys use their last part.
SHORT_KEYS = {"optimizer.lr": "lr", "training.batch_size": "batch"}
# Experiment keys with a section of their own kind; every other experiment is an ablation ("report" key).
SPECIAL_EXPERIMENTS = ("lr_sweep", "batch_size")
RESERVED_SECTIONS = ("tokenizer", "generate")
DEFAULT_TITLES = {"tokenizer": "Tokenizers", "lr_sweep": "Learning rate", "batch_size": "Batch size",
                  "generate": "Generation"}


# ---- the config: files, --config overrides, schema defaults ----------------------------------

def deep_merge(base: dict, update: dict) -> dict:
    """`base` with `update` merged in, nested mappings key by key (as Snakemake merges configs)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def typed(value: Any) -> Any:
    """`--config key={a: 3}` gives nested values as text; read them as the YAML config file would."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, str):
        parsed = yaml.safe_load(value) if value.strip() else value
        return parsed if parsed is None or isinstance(parsed, (bool, int, float)) else value
    return value


def _schema_validator():
    """A JSON-schema validator that also fills in each property's default, as Snakemake's `validate` does."""
    import jsonschema

    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    extended = jsonschema.validators.extend(base, {"properties": set_defaults})
    return extended(yaml.safe_load(SCHEMA.read_text()))


def validate_config(data: dict) -> dict:
    """A copy of `data` checked against the schema, defaults filled in. Raises ValueError naming the key."""
    data = copy.deepcopy(data)
    error = next(iter(sorted(_schema_validator().iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = ".".join(map(str, error.absolute_path)) or "(top level)"
        raise ValueError(f"config {where}: {error.message}")
    return data


def read_config_file(path: str | Path) -> dict:
    text = read_text(path, "config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise file_error("config file", path, f"is not valid YAML ({first_line(error)})") from None
    if not isinstance(data, dict):
        raise file_error("config file", path, "is not a mapping of config keys")
    return data


def resolve_config(configfiles: list[str | Path], overrides: dict | None = None) -> dict:
    """What a run means: the named config files merged in order, then `overrides` (--config), then
    the schema's defaults. No other file is read."""
    data: dict = {}
    for path in configfiles:
        data = deep_merge(data, read_config_file(path))
    return validate_config(deep_merge(data, typed(overrides or {})))


# ---- values in run names and labels ----------------------------------------------------------

def format_value(value: Any) -> str:
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


def setting_text(key: str, value: Any) -> str:
    return f"{SHORT_KEYS.get(key, key.rsplit('.', 1)[-1])}={format_value(value)}"


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Settings that say how a run is observed, not what it is: left out of "what it changes".
BOOKKEEPING = ("name", "training.eval_interval", "training.log_interval", "training.checkpoint_interval")


def config_changes(run: RunConfig, baseline: RunConfig) -> str:
    """The run's settings that differ from the baseline's, e.g. "norm=none, lr=1e-3"; a new corpus or
    tokenizer shows as corpus=... / tokenizer=... (from the data paths)."""
    ours, theirs = _flatten(run.to_dict()), _flatten(baseline.to_dict())
    changed = [key for key in ours if key not in BOOKKEEPING and ours[key] != theirs.get(key)]
    texts = []
    for key in changed:
        value = ours[key]
        if key == "data.train_tokens":   # results/tokens/<tok>/<corpus>/train.npy
            tok, corpus = Path(value).parts[-3:-1]
            texts += [f"corpus={corpus}", f"tokenizer={tok}"]
        elif not key.startswith("data."):
            texts.append(setting_text(key, float(f"{value:.3g}") if isinstance(value, float) else value))
    return ", ".join(dict.fromkeys(texts))


# ---- the plan --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedRun:
    name: str
    config: RunConfig
    tokenizer: str
    corpus: str
    section: str                 # the section that first asked for it
    changes: str                 # against the baseline, e.g. "norm=none, lr=1e-3"; "" for the baseline itself
    resources: dict[str, int]    # of its training job: gpu (all processes), devices, runtime (min), mem_mb
    data_note: str = ""          # set when the tokenizer was trained on another corpus than the run's

    @property
    def steps(self) -> int:
        return self.config.total_steps

    @property
    def tokens(self) -> int:
        return self.steps * self.config.tokens_per_step

    @property
    def train_flops(self) -> float:
        from tinylm.nn.flops import training_flops_per_token

        return float(self.tokens) * training_flops_per_token(self.config.model)


@dataclass(frozen=True)
class Generation:
    """Samples drawn for a section: from the best (non-diverged, lowest final loss) of `runs`."""

    group: str                           # the corpus of its runs: results/generate/<group>/<setting>.json
    runs: tuple[str, ...]
    settings: dict[str, dict[str, list]]  # label -> {"temperatures", "top_ps", "seeds"}
    main: str                            # the label of the main setting


@dataclass(frozen=True)
class PlannedSection:
    name: str
    title: str                   # e.g. "4. No RMSNorm"
    kind: str                    # one of tinylm.report.KINDS
    description: str = ""
    runs: dict[str, str] = field(default_factory=dict)  # run name -> label, in plot order
    baseline: str | None = None  # the run compared against (drawn dashed)
    generation: Generation | None = None
    pending_probe: bool = False  # batch_size before the max-batch probe: the largest batch is not known yet


@dataclass(frozen=True)
class Plan:
    runs: dict[str, PlannedRun]
    sections: dict[str, PlannedSection]
    probe: dict | None           # the max-batch probe's settings, or None when it is off

    def sections_using(self) -> dict[str, list[str]]:
        """{run name: the sections that show it}; runs no section shows (batch sizes the probe
        dropped) are left out."""
        uses: dict[str, list[str]] = {}
        for section in self.sections.values():
            for run in section.runs:
                uses.setdefault(run, []).append(section.name)
        return uses

    def run(self, name: str) -> PlannedRun:
        if name not in self.runs:
            raise ValueError(f"unknown run {name!r}: not in the plan ({', '.join(self.runs)})")
        return self.runs[name]


def _config_error(where: str, error: Exception | str) -> ValueError:
    return ValueError(f"config {where}: {error}")


def sampling_label(setting: dict) -> str:
    return f"T={format_value(float(setting['temperature']))}_p={format_value(float(setting['top_p']))}"


class _Planner:
    """Builds the plan in one pass over the config; `build_plan` is its only user."""

    def __init__(self, config: dict, largest_batch: int | None):
        self.config, self.largest_batch = config, largest_batch
        self._check_references()
        self.runs: dict[str, PlannedRun] = {}
        self.by_content: dict[str, str] = {}
        base = config["baseline"]
        self.baseline = self._run_config(BASELINE_RUN, base["tokenizer"], base["corpus"], {}, "baseline")
        self._add(self._make(BASELINE_RUN, base["tokenizer"], base["corpus"], {}, "baseline", "baseline"))

    # -- references between config entries, checked before any run is made
    def _check_references(self) -> None:
        c = self.config

        def need(value: str, kind: str, key: str) -> None:
            known = list(c[kind])
            if value not in known:
                raise _config_error(key, f"{value!r} is not one of config {kind} ({', '.join(known)})")

        for name, tok in c["tokenizers"].items():
            need(tok["corpus"], "corpora", f"tokenizers.{name}.corpus")
        for i, corpus in enumerate(c["tokenizer_report"]["corpora"] or []):
            need(corpus, "corpora", f"tokenizer_report.corpora[{i}]")
        need(c["baseline"]["tokenizer"], "tokenizers", "baseline.tokenizer")
        need(c["baseline"]["corpus"], "corpora", "baseline.corpus")
        for name, exp in c["experiments"].items():
            if name in RESERVED_SECTIONS:
                raise _config_error(f"experiments.{name}", f"{name!r} is a built-in report section, not an experiment")
            if "tokenizer" in exp:
                need(exp["tokenizer"], "tokenizers", f"experiments.{name}.tokenizer")
            if "corpus" in exp:
                need(exp["corpus"], "corpora", f"experiments.{name}.corpus")

    def _run_config(self, name: str, tok: str, corpus: str, overrides: dict, where: str) -> RunConfig:
        base = self.config["baseline"]
        data = {
            "name": name,
            "model": dict(base["model"], vocab_size=self.config["tokenizers"][tok]["vocab_size"]),
            "optimizer": base["optimizer"],
            "training": base["training"],
            "data": {"train_tokens": tokens_path(tok, corpus, "train"),
                     "valid_tokens": tokens_path(tok, corpus, "valid"),
                     "tokenizer_dir": tokenizer_dir(tok)},
        }
        try:
            return RunConfig.from_dict(copy.deepcopy(data)).with_overrides(overrides)
        except ValueError as error:
            raise _config_error(where, error) from None

    def _make(self, name: str, tok: str, corpus: str, overrides: dict, where: str, section: str,
              resources: dict | None = None) -> PlannedRun:
        run_config = self._run_config(name, tok, corpus, overrides, where)
        merged = dict(self.config["resources"]["train"], **(resources or {}))
        merged["gpu"] *= run_config.training.devices
        merged["devices"] = run_config.training.devices
        made_from = self.config["tokenizers"][tok]["corpus"]
        note = f"tokenizer {tok!r} was trained on {made_from!r}" if made_from != corpus else ""
        return PlannedRun(name, run_config, tok, corpus, section, config_changes(run_config, self.baseline),
                          merged, note)

    def _add(self, run: PlannedRun) -> str:
        """The name under which `run` is trained: an earlier run with the same content keeps its name."""
        content = run.config.to_dict()
        content.pop("name")
        name = self.by_content.setdefault(json.dumps(content, sort_keys=True), run.name)
        self.runs.setdefault(name, run)
        return name

    # -- sections
    def overrides_and_sweep(self, name: str) -> tuple[dict[str, str], bool]:
        """{run name: label} of an experiment with overrides and an optional sweep."""
        exp = self.config["experiments"][name]
        base = self.config["baseline"]
        tok, corpus = exp.get("tokenizer", base["tokenizer"]), exp.get("corpus", base["corpus"])
        overrides = dict(exp["overrides"])
        prefix = exp.get("label") or ", ".join(setting_text(k, v) for k, v in overrides.items())
        baseline = self.baseline.to_dict()
        labels = {}
        for values in itertools.product(*exp["sweep"].values()):
            # The value "baseline" in a sweep stands for the baseline's own setting.
            point = {k: (_dotted_get(baseline, k) if v == "baseline" else v) for k, v in zip(exp["sweep"], values)}
            settings = [setting_text(k, v) for k, v in point.items()]
            swept = "-".join(settings)
            run_name = f"{name}-{swept}" if swept else name
            where = f"experiments.{name}" + (f" ({swept})" if swept else "")
            run = self._make(run_name, tok, corpus, {**overrides, **point}, where, name, exp["resources"])
            labels[self._add(run)] = " ".join([prefix] * bool(prefix) + settings) or name
        compare = exp["compare_baseline"]
        if compare:
            labels.setdefault(BASELINE_RUN, "baseline")
        return labels, compare

    def batch_size_run(self, batch: int) -> PlannedRun:
        """The baseline at `batch` with the section's token budget (whole steps), scaled lr, and
        intervals fixed in tokens so every batch size is logged, evaluated and warmed up over the
        same share of the budget."""
        exp = self.config["experiments"]["batch_size"]
        base = self.baseline
        scale = batch / base.training.batch_size
        exponent = {"constant": 0.0, "sqrt": 0.5, "linear": 1.0}[exp["lr_scaling"]]
        lr = min(base.optimizer.lr * scale ** exponent, float(exp["max_lr"] or math.inf))
        per_tokens = lambda steps: max(1, round(steps / scale))  # noqa: E731
        steps = math.ceil(exp["max_tokens"] / (batch * base.model.context_length))
        overrides = {
            "training.batch_size": batch, "training.max_steps": steps, "training.max_tokens": None,
            "optimizer.lr": lr,
            "optimizer.warmup_steps": min(per_tokens(base.optimizer.warmup_steps), steps // 2),
            "training.eval_interval": per_tokens(base.training.eval_interval),
            "training.log_interval": per_tokens(base.training.log_interval),
            "training.checkpoint_interval": per_tokens(base.training.checkpoint_interval),
        }
        b = self.config["baseline"]
        return self._make(f"batch_size-batch={batch}", b["tokenizer"], b["corpus"], overrides,
                          f"experiments.batch_size (batch={batch})", "batch_size", exp["resources"])

    def batch_sizes(self) -> tuple[list[int], bool]:
        """(batch sizes to train, whether the probe's answer is still missing)."""
        exp = self.config["experiments"]["batch_size"]
        sizes = sorted(set(exp["batch_sizes"]))
        if not exp["find_max"]:
            return sizes, False
        if self.largest_batch is None:
            return [b for b in sizes if b <= exp["max_batch"]], True
        return sorted({b for b in sizes if b <= self.largest_batch} | {self.largest_batch}), False

    def generation(self, group: str, runs: list[str], grid: bool) -> Generation:
        gen = self.config["generate"]
        main = sampling_label(gen["main"])
        settings = {main: {"temperatures": [gen["main"]["temperature"]], "top_ps": [gen["main"]["top_p"]],
                           "seeds": gen["seeds"]}}
        if grid:
            settings["grid"] = {key: gen["grid"][key] for key in ("temperatures", "top_ps", "seeds")}
        return Generation(group, tuple(runs), settings, main)

    def sections(self) -> dict[str, PlannedSection]:
        exps = self.config["experiments"]
        order = ["tokenizer", "lr_sweep", "batch_size", "generate"]
        order += [name for name in exps if name not in SPECIAL_EXPERIMENTS]
        made: dict[str, PlannedSection] = {}
        # Every experiment's runs are made before the batch-size runs, whatever the report order, so a
        # run's name never depends on whether the probe has run.
        planned = {name: self.overrides_and_sweep(name) for name in exps if name != "batch_size"}
        base_corpus = self.config["baseline"]["corpus"]
        for number, name in enumerate(order):
            exp = exps.get(name, {})
            title = f"{number}. {exp.get('title') or DEFAULT_TITLES.get(name) or exp.get('label') or name}"
            if name == "tokenizer":
                made[name] = PlannedSection(name, title, "tokenizer")
            elif name == "lr_sweep":
                labels, compare = planned[name]
                made[name] = PlannedSection(name, title, "lr_sweep", exp.get("description", ""), labels,
                                            BASELINE_RUN if compare else None)
            elif name == "batch_size":
                sizes, pending = self.batch_sizes()
                labels = {self._add(self.batch_size_run(b)): f"batch={b}" for b in sizes}
                made[name] = PlannedSection(name, title, "batch_size", exp.get("description", ""), labels,
                                            BASELINE_RUN if BASELINE_RUN in labels else None,
                                            pending_probe=pending)
            elif name == "generate":
                pool = list(planned["lr_sweep"][0]) + [BASELINE_RUN]
                pool = list(dict.fromkeys(pool))
                made[name] = PlannedSection(name, title, "generate", runs={r: "" for r in pool},
                                            generation=self.generation(base_corpus, pool, grid=True))
            else:
                labels, compare = planned[name]
                own = [r for r in labels if r != BASELINE_RUN]
                kind, generation = exp["report"], None
                if kind == "corpus":
                    corpus = exp.get("corpus", base_corpus)
                    if corpus == base_corpus:
                        raise _config_error(f"experiments.{name}.corpus",
                                            f"a 'corpus' section compares another corpus with the baseline's "
                                            f"({base_corpus!r}); set corpus (and tokenizer)")
                    generation = self.generation(corpus, own, grid=False)
                    if compare:
                        labels[BASELINE_RUN] = f"{base_corpus} baseline"
                changes = self.runs[own[0]].changes if own else "no change"
                description = exp["description"] or f"{exp.get('label') or name} ({changes}) against the baseline."
                made[name] = PlannedSection(name, title, kind, description, labels,
                                            BASELINE_RUN if compare else None, generation)
        for section in made.values():
            if section.kind not in KINDS:
                raise _config_error(f"experiments.{section.name}.report", f"unknown report kind {section.kind!r}")
        return made


def _dotted_get(data: dict, dotted: str) -> Any:
    node = data
    for part in dotted.split("."):
        node = node[part]
    return node


def build_plan(config: dict, largest_batch: int | None = None) -> Plan:
    """Every run and report section of a resolved config (see resolve_config). `largest_batch` is
    the max-batch probe's answer; without it the batch-size section lists the configured sizes up to
    the probe's limit and is marked pending."""
    planner = _Planner(config, largest_batch)
    sections = planner.sections()
    exp = config["experiments"]["batch_size"]
    probe = ({"max_batch": exp["max_batch"], "cpu_memory_budget_mb": exp["cpu_memory_budget_mb"]}
             if exp["find_max"] else None)
    return Plan(planner.runs, sections, probe)


# ---- paths (shared by the rule files and the planner) ----------------------------------------

def tokenizer_dir(tok: str) -> str:
    return f"{RESULTS}/tokenizers/{tok}"


def tokens_path(tok: str, corpus: str, split: str) -> str:
    return f"{RESULTS}/tokens/{tok}/{corpus}/{split}.npy"


# ---- `tinylm plan` ---------------------------------------------------------------------------

# The GPU-time estimate's stated throughput: model FLOPs at this fraction of this peak (the
# PaLM-style MFU accounting of tinylm.nn.flops). Both are assumptions, printed with the table.
ASSUMED_PEAK_FLOPS = 989e12   # H100 SXM dense bf16, from NVIDIA's datasheet
ASSUMED_MFU = 0.40


def _human(number: float, unit: str = "") -> str:
    for scale, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= scale:
            return f"{number / scale:.3g} {suffix}{unit}"
    return f"{number:.3g} {unit}".rstrip()


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "<1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


@dataclass(frozen=True)
class MemoryFit:
    """A run's predicted peak memory on its device, and whether it fits a given device memory."""

    device: str                  # the device type the prediction is for
    predicted_peak_bytes: int    # one process's training step (tinylm.memory_model)
    method: str                  # "fake" (traced) or "analytic"
    fits: bool | None = None     # with a device memory: whether the prediction fits it
    largest_batch: int | None = None  # with a device memory: the largest global batch that would


def run_device_type(run: PlannedRun) -> str:
    """The device type a run trains on; `auto` as it would resolve on this machine."""
    device = run.config.training.device
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def memory_fits(plan: Plan, device_memory_bytes: int | None = None) -> dict[str, MemoryFit]:
    """Every run's predicted peak memory; with `device_memory_bytes`, whether it fits and the
    largest global batch that would (a multiple of the run's devices)."""
    from tinylm.memory_model import largest_fitting_batch, predict_step_memory

    fits: dict[str, MemoryFit] = {}
    by_shape: dict[str, MemoryFit] = {}  # runs that differ in learning rate alone share their step
    for name, run in plan.runs.items():
        device, t = run_device_type(run), run.config.training
        shape = json.dumps([device, run.config.model.__dict__, t.batch_size, t.devices, t.precision, t.attention])
        if shape not in by_shape:
            prediction = predict_step_memory(run.config, device)
            fit, largest = None, None
            if device_memory_bytes is not None:
                fit = prediction.peak_bytes <= device_memory_bytes
                largest = largest_fitting_batch(run.config, device, device_memory_bytes) * t.devices
            by_shape[shape] = MemoryFit(device, prediction.peak_bytes, prediction.method, fit, largest)
        fits[name] = by_shape[shape]
    return fits


def plan_table(plan: Plan, peak_flops: float = ASSUMED_PEAK_FLOPS, mfu: float = ASSUMED_MFU,
               memory: dict[str, MemoryFit] | None = None, device_memory_bytes: int | None = None) -> str:
    """The plan as a text table: one row per run (first section that uses it), totals at the bottom;
    with `memory`, each run's predicted peak memory (and with a device memory, whether it fits)."""
    uses = plan.sections_using()
    header = ["run", "sections", "changes against the baseline", "steps", "tokens", "train FLOPs", "GPU time"]
    if memory is not None:
        header.append("peak memory")
        if device_memory_bytes is not None:
            header += [f"fits {device_memory_bytes / 1e9:g} GB", "largest batch"]
    rows = []
    seconds_per_flop = 1 / (peak_flops * mfu)
    for run in plan.runs.values():
        changes = run.changes or "(the baseline)"
        if run.data_note:
            changes += f"; {run.data_note}"
        row = [run.name, ", ".join(uses.get(run.name, [run.section])), changes, f"{run.steps:,}",
               _human(run.tokens), _human(run.train_flops), _duration(run.train_flops * seconds_per_flop)]
        if memory is not None:
            fit = memory[run.name]
            row.append(f"{_human(fit.predicted_peak_bytes, 'B')} ({fit.device})")
            if device_memory_bytes is not None:
                row += ["yes" if fit.fits else "no", f"{fit.largest_batch:,}"]
        rows.append(row)
    total_flops = sum(run.train_flops for run in plan.runs.values())
    total = ["total", f"{len(plan.runs)} runs", "", f"{sum(r.steps for r in plan.runs.values()):,}",
             _human(sum(r.tokens for r in plan.runs.values())), _human(total_flops),
             _duration(total_flops * seconds_per_flop)]
    rows.append(total + [""] * (len(header) - len(total)))
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    left = {0, 1, 2}

    def line(row: list[str]) -> str:
        return "  ".join(str(v).ljust(w) if i in left else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])]
    notes = [f"GPU time: training FLOPs at {mfu:.0%} MFU of {_human(peak_flops, 'FLOP/s')} "
             "(an assumption, not a measurement: --peak-flops and --mfu change it); evaluation, "
             "probes and generation not included."]
    if memory is not None:
        methods = sorted({fit.method for fit in memory.values()})
        notes.append(f"Peak memory: the tensors of one process's eager training step on its device, predicted "
                     f"({' and '.join(methods)}; tinylm.memory_model), in GB of 10^9 bytes; a compiled step "
                     "usually needs less, and a GPU also holds the CUDA context and the allocator's cache.")
    for section in plan.sections.values():
        if section.pending_probe:
            notes.append(f"{section.name}: the max-batch probe adds the largest batch that fits "
                         f"(up to {plan.probe['max_batch']}) and drops the sizes above it.")
    return "\n".join(out + [""] + notes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", nargs="+", default=[DEFAULT_CONFIGFILE], metavar="YAML",
                        help=f"pipeline config file(s), merged in order (default {DEFAULT_CONFIGFILE})")
    parser.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides, as Snakemake's --config: e.g. 'baseline={training: {max_steps: 10}}'")
    parser.add_argument("--peak-flops", type=float, default=ASSUMED_PEAK_FLOPS,
                        help="accelerator peak FLOP/s for the GPU-time estimate (default: H100 SXM bf16 dense)")
    parser.add_argument("--mfu", type=float, default=ASSUMED_MFU,
                        help="model FLOPs utilisation assumed for the GPU-time estimate (default 0.4)")
    parser.add_argument("--device-memory-gb", type=float, default=None, metavar="N",
                        help="a device's memory in GB (10^9 bytes): say which runs' predicted peak fits it, and "
                             "the largest batch that would")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="leave out the memory predictions (they trace each run's step: seconds per run on a CPU)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")


def parse_overrides(pairs: list[str]) -> dict:
    overrides: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--config {pair!r}: expected KEY=VALUE")
        overrides = deep_merge(overrides, {key: typed(yaml.safe_load(value) if value.strip() else value)})
    return overrides


def plan_json(plan: Plan, memory: dict[str, MemoryFit] | None = None) -> dict:
    uses = plan.sections_using()
    runs = {}
    for name, r in plan.runs.items():
        runs[name] = {"section": r.section, "sections": uses.get(name, []), "changes": r.changes,
                      "tokenizer": r.tokenizer, "corpus": r.corpus, "data_note": r.data_note, "steps": r.steps,
                      "tokens": r.tokens, "train_flops": r.train_flops, "resources": r.resources,
                      "config": r.config.to_dict()}
        if memory is not None:
            runs[name].update(dataclasses.asdict(memory[name]))
    return {
        "runs": runs,
        "sections": {name: {"title": s.title, "kind": s.kind, "runs": s.runs, "baseline": s.baseline,
                            "pending_probe": s.pending_probe} for name, s in plan.sections.items()},
    }


def run(args: argparse.Namespace) -> int:
    if not (args.peak_flops > 0 and math.isfinite(args.peak_flops)):
        raise ValueError(f"--peak-flops: must be a positive number, got {args.peak_flops}")
    if not 0 < args.mfu <= 1:
        raise ValueError(f"--mfu: must be in (0, 1], got {args.mfu}")
    memory_gb = args.device_memory_gb
    if memory_gb is not None and not (math.isfinite(memory_gb) and memory_gb > 0):
        raise ValueError(f"--device-memory-gb: must be a positive number, got {memory_gb:g}")
    if memory_gb is not None and not args.memory:
        raise ValueError("--device-memory-gb: needs the memory predictions that --no-memory leaves out")
    plan = build_plan(resolve_config(args.configfile, parse_overrides(args.config)))
    memory_bytes = None if memory_gb is None else int(memory_gb * 1e9)
    memory = memory_fits(plan, memory_bytes) if args.memory else None
    if args.json:
        print(json.dumps(plan_json(plan, memory), indent=2))
    else:
        print(plan_table(plan, args.peak_flops, args.mfu, memory, memory_bytes))
    return 0
