"""The experiment plan: from a pipeline config to every run and every report section.

    config = resolve_config(["config/reference.yaml"], {"training_devices": ...})   # file(s) + schema defaults
    plan = build_plan(config)                    # runs known before the max-batch probe
    plan = build_plan(config, largest_batch=256) # ... and the batch-size runs once it has run
    plan = build_plan(config, refinements={"lr_sweep": ((5.5e-2,), False)})  # ... and rates refinement added

A plan is plain data: `plan.runs` maps run names to `PlannedRun` (its `RunConfig`, tokenizer,
corpus, resources and what it changes against the baseline), `plan.sections` maps section names to
`PlannedSection` (title, report kind, runs with their labels, their replicas, generation samples).
The Snakefile, the rule files and `tinylm plan` read it; nothing parses run names.

Runs are the baseline (config key `baseline`) plus, per experiment, the baseline with overrides and an
optional sweep. Two runs with the same content are one run: the first name wins, so the lr sweep at
the baseline's rate (and the batch-size run at the baseline's batch and budget) is the run `baseline`
itself, with that section's label.

Seeds (config `seeds`): the first is the baseline's `training.seed`, and every run above is at it,
under the names above, so that adding seeds renames and retrains nothing. Each further seed
replicates every run, the batch-size runs and the rates refinement added included, with
`training.seed` set to it and the name suffixed `-seed=<seed>` (`replica_name`); a section keeps its
runs (the first seed's) and lists their replicas (`PlannedSection.replicas`), which its report
compares seed by seed. Refinement decides on the first seed's runs alone, and a refined rate's
replicas follow its decision; generation and export sample the first seed's runs.

Sections are planned by their kinds (tinylm.report.kinds): this module makes the runs every
experiment's overrides and sweep ask for, orders the sections and numbers their titles, and hands
each kind a `Planner` to plan its section with. It imports no report code at module level (the
kinds import its dataclasses), and nothing heavy: the Snakefile imports it.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tinylm.config import RunConfig
from tinylm.formatting import fmt_value
from tinylm.pipeline.naming import config_changes, setting_name, setting_text
from tinylm.pipeline.paths import tokenizer_dir, tokens_path

if TYPE_CHECKING:
    from tinylm.report.kinds import Kind

BASELINE_RUN = "baseline"
LR = "optimizer.lr"  # the setting a rate sweep sweeps
SEED = "training.seed"  # the setting config `seeds` replicates runs over


def replica_name(run: str, seed: int) -> str:
    """The name of `run` (a first seed's run) at a further seed: `nope-seed=1`."""
    return f"{run}-{setting_text(SEED, seed)}"


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
    replica_of: str = ""         # at a further seed: the first seed's run it replicates

    @property
    def seed(self) -> int:
        return self.config.training.seed

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


# What refinement added to a sweep so far: (the rates, in order; whether it is done).
Refinement = tuple[tuple[float, ...], bool]


@dataclass(frozen=True)
class RateSweep:
    """A sweep over learning rates alone, and the rates refinement added to it.

    After the grid, `tinylm refine-rates` decides one round at a time the geometric midpoint of the
    bracket the edge of stability lies in (from the largest rate that trains to the smallest that
    fails), until the bracket's ratio is at most `refine_to` or `max_refinements` rates were added;
    without a failing rate (or one that trains) it extends the grid by its own `step`."""

    key: str                     # path-safe: names its refinement rounds
    section: str
    runs: dict[float, str]       # rate -> run, every rate so far (the grid's, then refinement's)
    grid: tuple[float, ...]
    step: float                  # the grid's largest ratio between neighbouring rates
    refine_to: float
    max_refinements: int
    refined: tuple[float, ...]   # the rates refinement added, in order
    complete: bool               # no more rounds: narrow enough, or max_refinements added
    name_prefix: str             # the name of its run at rate r is this prefix and r as text

    def run_name(self, rate: float) -> str:
        """The name of its run at `rate` (made or not)."""
        return self.runs.get(rate) or self.name_prefix + fmt_value(rate)


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
    rate_sweeps: tuple[str, ...] = ()  # keys of its sweeps over learning rates (Plan.rate_sweeps)
    compare_with: tuple[dict, ...] = ()  # points from elsewhere its figures draw beside its own (edge_scale)
    # run name -> its replicas at the further seeds, in seed order; set by build_plan for the kinds
    # drawn from runs (empty with one seed)
    replicas: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def replica_labels(self) -> list[tuple[str, str]]:
        """(label, replica) of every replica, in the order of the runs, then of the seeds."""
        return [(label, replica) for run, label in self.runs.items() for replica in self.replicas.get(run, ())]


@dataclass(frozen=True)
class Plan:
    runs: dict[str, PlannedRun]
    sections: dict[str, PlannedSection]
    probe: dict | None           # the max-batch probe's settings, or None when it is off
    rate_sweeps: dict[str, RateSweep] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)  # config `seeds`: the first one's runs, then replicas at the others

    def at_seeds(self, run: str) -> list[str]:
        """The names of a first seed's run (made or not) at every seed, the first seed's first."""
        return [run] + [replica_name(run, seed) for seed in self.seeds[1:]]

    def pending_refinement(self, section: str) -> bool:
        """Whether refinement may still add rates (and runs) to one of the section's sweeps."""
        return any(not self.rate_sweeps[key].complete for key in self.sections[section].rate_sweeps)

    def sweep_of_run(self, run: str) -> RateSweep | None:
        """The sweep that names (or would name, once refinement adds its rate) the run `run`, or
        whose run it replicates."""
        return next((sweep for sweep in self.rate_sweeps.values() if run.startswith(sweep.name_prefix)), None)

    def sections_using(self) -> dict[str, list[str]]:
        """{run name: the sections that show it, replicas included}; runs no section shows (batch
        sizes the probe dropped) are left out."""
        uses: dict[str, list[str]] = {}
        for section in self.sections.values():
            for run in [*section.runs, *(replica for _, replica in section.replica_labels())]:
                uses.setdefault(run, []).append(section.name)
        return uses

    def run(self, name: str) -> PlannedRun:
        if name not in self.runs:
            raise ValueError(f"unknown run {name!r}: not in the plan ({', '.join(self.runs)})")
        return self.runs[name]


def config_error(where: str, error: Exception | str) -> ValueError:
    return ValueError(f"config {where}: {error}")


def sampling_label(setting: dict) -> str:
    return f"T={fmt_value(float(setting['temperature']))}_p={fmt_value(float(setting['top_p']))}"


@dataclass(frozen=True)
class ExperimentRuns:
    """The runs of an experiment: the baseline with its overrides, one per point of its sweep."""

    labels: dict[str, str]       # run name -> label, in plot order; the baseline too when compared
    compare: bool                # config compare_baseline: the baseline is shown, dashed

    @property
    def own(self) -> list[str]:
        """Its runs other than the baseline."""
        return [run for run in self.labels if run != BASELINE_RUN]

    @property
    def baseline(self) -> str | None:
        return BASELINE_RUN if self.compare else None


class Planner:
    """The runs and sections of a plan while it is made. `build_plan` makes the runs every
    experiment's overrides and sweep ask for, then asks each section's kind (tinylm.report.kinds) to
    plan its section with the methods here."""

    def __init__(self, config: dict, largest_batch: int | None, kinds: dict[str, Kind],
                 refinements: dict[str, Refinement] | None = None):
        self.config, self.largest_batch, self.refinements = config, largest_batch, refinements or {}
        self.kinds = kinds
        self._check_references(kinds)
        self.runs: dict[str, PlannedRun] = {}
        self.sections: dict[str, PlannedSection] = {}  # planned so far
        self.probe: dict | None = None  # the max-batch probe's settings, set by the section that needs it
        self.rate_sweeps: dict[str, RateSweep] = {}
        self.by_content: dict[str, str] = {}
        self._experiment_runs: dict[str, ExperimentRuns] = {}
        base = config["baseline"]
        self.baseline = self._run_config(BASELINE_RUN, base["tokenizer"], base["corpus"], {}, "baseline")
        if config["seeds"][0] != self.baseline.training.seed:
            raise config_error("seeds", f"the first seed must be the baseline's training.seed "
                                        f"({self.baseline.training.seed}), got {config['seeds'][0]}")
        self.add(self.make(BASELINE_RUN, base["tokenizer"], base["corpus"], {}, "baseline", "baseline"))

    # -- references between config entries, checked before any run is made
    def _check_references(self, kinds: dict[str, Kind]) -> None:
        c = self.config

        def need(value: str, kind: str, key: str) -> None:
            known = list(c[kind])
            if value not in known:
                raise config_error(key, f"{value!r} is not one of config {kind} ({', '.join(known)})")

        for name, tok in c["tokenizers"].items():
            need(tok["corpus"], "corpora", f"tokenizers.{name}.corpus")
        for i, corpus in enumerate(c["tokenizer_report"]["corpora"] or []):
            need(corpus, "corpora", f"tokenizer_report.corpora[{i}]")
        need(c["baseline"]["tokenizer"], "tokenizers", "baseline.tokenizer")
        need(c["baseline"]["corpus"], "corpora", "baseline.corpus")
        for name, exp in c["experiments"].items():
            if name in kinds and kinds[name].place is not None and not kinds[name].experiment:
                raise config_error(f"experiments.{name}", f"{name!r} is a built-in report section, not an experiment")
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
            raise config_error(where, error) from None

    def make(self, name: str, tok: str, corpus: str, overrides: dict, where: str, section: str,
             resources: dict | None = None) -> PlannedRun:
        """The baseline with `overrides`, on `tok` and `corpus`; `where` names its config entry in errors."""
        run_config = self._run_config(name, tok, corpus, overrides, where)
        merged = dict(self.config["resources"]["train"], **(resources or {}))
        merged["gpu"] *= run_config.training.devices
        merged["devices"] = run_config.training.devices
        made_from = self.config["tokenizers"][tok]["corpus"]
        note = f"tokenizer {tok!r} was trained on {made_from!r}" if made_from != corpus else ""
        return PlannedRun(name, run_config, tok, corpus, section, self._changes(run_config, tok, corpus), merged, note)

    def _changes(self, run_config: RunConfig, tok: str, corpus: str) -> str:
        base = self.config["baseline"]
        return config_changes(run_config, self.baseline, {"corpus": (corpus, base["corpus"]),
                                                          "tokenizer": (tok, base["tokenizer"])})

    def add(self, run: PlannedRun) -> str:
        """The name under which `run` is trained: an earlier run with the same content keeps its name."""
        content = json.dumps(run.config.settings(leave_out=("identity",)), sort_keys=True)
        name = self.by_content.setdefault(content, run.name)
        self.runs.setdefault(name, run)
        return name

    def replicate(self) -> None:
        """Every run at each further seed of config `seeds`, and the sections' replicas of their
        runs (kinds drawn from runs only). A run that sets its own seed has no seed to replicate
        it at: with several seeds that is an error."""
        first, *further = self.config["seeds"]
        if not further:
            return
        for run in list(self.runs.values()):
            if run.seed != first:
                raise config_error("seeds", f"run {run.name!r} sets training.seed ({run.seed}); with several "
                                            f"seeds, `seeds` sets every run's seed")
        for seed in further:
            for run in [run for run in self.runs.values() if not run.replica_of]:
                config = run.config.with_overrides({"name": replica_name(run.name, seed), SEED: seed})
                self.runs[config.name] = replace(
                    run, name=config.name, config=config, changes=self._changes(config, run.tokenizer, run.corpus),
                    replica_of=run.name)
        for name, section in self.sections.items():
            if self.kinds[section.kind].runs:
                replicas = {run: tuple(replica_name(run, seed) for seed in further) for run in section.runs}
                self.sections[name] = replace(section, replicas=replicas)

    # -- what kinds read while they plan their sections
    def experiment(self, name: str) -> dict:
        """Config `experiments.<name>`; {} for a section that has no experiment."""
        return self.config["experiments"].get(name, {})

    def experiment_runs(self, name: str) -> ExperimentRuns:
        """The runs of an experiment with overrides and an optional sweep (made once, then recalled)."""
        if name not in self._experiment_runs:
            self._experiment_runs[name] = self._overrides_and_sweep(name)
        return self._experiment_runs[name]

    def _overrides_and_sweep(self, name: str) -> ExperimentRuns:
        exp = self.config["experiments"][name]
        base = self.config["baseline"]
        tok, corpus = exp.get("tokenizer", base["tokenizer"]), exp.get("corpus", base["corpus"])
        overrides = dict(exp["overrides"])
        prefix = exp.get("label") or ", ".join(setting_text(k, v) for k, v in overrides.items())
        baseline = self.baseline.to_dict()

        def run_at(point: dict) -> tuple[str, str]:
            """(the run's name, its label) of the experiment at one point of its sweep."""
            settings = [setting_text(k, v) for k, v in point.items()]
            swept = "-".join(settings)
            run_name = f"{name}-{swept}" if swept else name
            where = f"experiments.{name}" + (f" ({swept})" if swept else "")
            run = self.make(run_name, tok, corpus, {**overrides, **point}, where, name, exp["resources"])
            return self.add(run), " ".join([prefix] * bool(prefix) + settings) or name

        # The value "baseline" in a sweep stands for the baseline's own setting.
        points = [{k: (_dotted_get(baseline, k) if v == "baseline" else v) for k, v in zip(exp["sweep"], values)}
                  for values in itertools.product(*exp["sweep"].values())]
        if list(exp["sweep"]) == [LR]:
            by_rate = self.rate_sweep(name, name, [point[LR] for point in points], exp, f"{name}-{setting_name(LR)}=",
                                      lambda rate: run_at({LR: rate}))
            labels = dict(by_rate.values())
        else:
            labels = dict(run_at(point) for point in points)
        compare = exp["compare_baseline"]
        if compare:
            labels.setdefault(BASELINE_RUN, "baseline")
        return ExperimentRuns(labels, compare)

    def rate_sweep(self, key: str, section: str, grid: list[float], settings: dict, name_prefix: str,
                   run_at: Callable[[float], tuple[str, str]]) -> dict[float, tuple[str, str]]:
        """The runs of a sweep over learning rates: its grid's, then those refinement added so far
        (build_plan's `refinements`); `run_at(rate)` makes one and returns (its name, its label).
        `settings` holds the sweep's refine_to and max_refinements. Returns {rate: (name, label)}."""
        grid = list(dict.fromkeys(float(rate) for rate in grid))  # in the config's order: it orders the runs
        refined, complete = self.refinements.get(key, ((), settings["max_refinements"] == 0))
        runs = {rate: run_at(rate) for rate in [*grid, *(r for r in refined if r not in grid)]}
        ordered = sorted(grid)
        step = max((b / a for a, b in zip(ordered, ordered[1:])), default=math.sqrt(10))
        self.rate_sweeps[key] = RateSweep(key, section, {rate: name for rate, (name, _) in runs.items()},
                                          tuple(grid), step, settings["refine_to"], settings["max_refinements"],
                                          tuple(refined), complete, name_prefix)
        return runs

    def sweeps_of(self, section: str) -> tuple[str, ...]:
        """The keys of the rate sweeps made for `section` so far."""
        return tuple(key for key, sweep in self.rate_sweeps.items() if sweep.section == section)

    def described(self, name: str) -> str:
        """The experiment's description, else what its first run changes against the baseline."""
        exp = self.experiment(name)
        own = self.experiment_runs(name).own
        changes = self.runs[own[0]].changes if own else "no change"
        return exp["description"] or f"{exp.get('label') or name} ({changes}) against the baseline."

    def generation(self, group: str, runs: list[str], grid: bool) -> PlannedSamples:
        """Samples from the best of `runs` at the main sampling setting, and with `grid` the settings grid."""
        gen = self.config["generate"]
        main = sampling_label(gen["main"])
        settings = {main: {"temperatures": [gen["main"]["temperature"]], "top_ps": [gen["main"]["top_p"]],
                           "seeds": gen["seeds"]}}
        if grid:
            settings["grid"] = {key: gen["grid"][key] for key in ("temperatures", "top_ps", "seeds")}
        return PlannedSamples(group, tuple(runs), settings, main)


def _section_kind(config: dict, kinds: dict[str, Kind], name: str) -> Kind:
    """The kind of an experiment's section: the placed kind of its name, else its `report`."""
    if name in kinds and kinds[name].place is not None:
        return kinds[name]
    report = config["experiments"][name].get("report")
    per_experiment = [kind for kind, found in kinds.items() if found.place is None]
    if report not in per_experiment:
        raise config_error(f"experiments.{name}.report",
                           f"unknown report kind {report!r} (one of {', '.join(per_experiment)})")
    return kinds[report]


def report_order(config: dict, kinds: dict[str, Kind]) -> dict[str, Kind]:
    """{section name: its kind} in report order: the placed kinds' sections, then every other
    experiment's in config order."""
    experiments = config["experiments"]
    placeable = [(place, name, kind) for name, kind in kinds.items()
                 if (place := kind.place) is not None and all(needed in experiments for needed in kind.requires)]
    placed = {name: kind for _, name, kind in sorted(placeable, key=lambda item: item[0])}
    others = {name: _section_kind(config, kinds, name) for name in experiments if name not in placed}
    return placed | others


def _dotted_get(data: dict, dotted: str) -> Any:
    node = data
    for part in dotted.split("."):
        node = node[part]
    return node


def build_plan(config: dict, largest_batch: int | None = None,
               refinements: dict[str, Refinement] | None = None) -> Plan:
    """Every run and report section of a resolved config (see resolve_config). `largest_batch` is
    the max-batch probe's answer; without it the batch-size section lists the configured sizes up to
    the probe's limit and is marked pending. `refinements` holds what refinement added to each rate
    sweep (by its key) so far; a sweep without an entry has its grid only, and is pending unless it
    has no refinements to make."""
    # Imported here: the kinds' packages import this module's dataclasses.
    from tinylm.report import KINDS

    planner = Planner(config, largest_batch, KINDS, refinements)
    order = report_order(config, KINDS)
    # Every sweep's runs are made first, in config order, before any section's own runs (the batch
    # sizes): so a run's name never depends on the report order or on whether the probe has run.
    for name in config["experiments"]:
        if order[name].sweeps:
            planner.experiment_runs(name)
    for number, (name, kind) in enumerate(order.items()):
        exp = planner.experiment(name)
        title = f"{number}. {exp.get('title') or kind.title or exp.get('label') or name}"
        planner.sections[name] = kind.plan(planner, name, title)
    planner.replicate()
    return Plan(planner.runs, planner.sections, planner.probe, planner.rate_sweeps, tuple(config["seeds"]))
