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

import copy
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from tinylm.config import RunConfig
from tinylm.formatting import fmt_value
from tinylm.pipeline.naming import config_changes, setting_text
from tinylm.pipeline.paths import tokenizer_dir, tokens_path
from tinylm.report import KINDS

BASELINE_RUN = "baseline"
# Experiment keys with a section of their own kind; every other experiment is an ablation ("report" key).
SPECIAL_EXPERIMENTS = ("lr_sweep", "batch_size")
RESERVED_SECTIONS = ("tokenizer", "generate")
DEFAULT_TITLES = {"tokenizer": "Tokenizers", "lr_sweep": "Learning rate", "batch_size": "Batch size",
                  "generate": "Generation"}


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
class PlannedSamples:
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
    generation: PlannedSamples | None = None
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
    return f"T={fmt_value(float(setting['temperature']))}_p={fmt_value(float(setting['top_p']))}"


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
            "data": {"train_tokens": tokens_path(self.config["results_dir"], tok, corpus, "train"),
                     "valid_tokens": tokens_path(self.config["results_dir"], tok, corpus, "valid"),
                     "tokenizer_dir": tokenizer_dir(self.config["results_dir"], tok)},
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
        base = self.config["baseline"]
        changes = config_changes(run_config, self.baseline, {"corpus": (corpus, base["corpus"]),
                                                             "tokenizer": (tok, base["tokenizer"])})
        return PlannedRun(name, run_config, tok, corpus, section, changes, merged, note)

    def _add(self, run: PlannedRun) -> str:
        """The name under which `run` is trained: an earlier run with the same content keeps its name."""
        content = json.dumps(run.config.settings(leave_out=("identity",)), sort_keys=True)
        name = self.by_content.setdefault(content, run.name)
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

    def generation(self, group: str, runs: list[str], grid: bool) -> PlannedSamples:
        gen = self.config["generate"]
        main = sampling_label(gen["main"])
        settings = {main: {"temperatures": [gen["main"]["temperature"]], "top_ps": [gen["main"]["top_p"]],
                           "seeds": gen["seeds"]}}
        if grid:
            settings["grid"] = {key: gen["grid"][key] for key in ("temperatures", "top_ps", "seeds")}
        return PlannedSamples(group, tuple(runs), settings, main)

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
                made[name] = PlannedSection(name, title, "generate", runs=dict.fromkeys(pool, ""),
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
