"""Kinds of report section, one package each: `tinylm.report.kinds.<kind>`.

A kind's package (`__init__.py`) declares the kind as `KIND` and plans its sections; it imports
nothing heavy (no pandas, matplotlib or torch), because the Snakefile reads every kind while it
plans. Its module `section` builds a section from the inputs: findings, text, figures, tables;
it is imported only when `tinylm report <kind>` runs. `discover()` finds the packages, so adding a
kind is adding a package here.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tinylm.pipeline.plan import PlannedSection, Planner
    from tinylm.report.section import Inputs, Section

# The stems of the three loss-curve figures (Section.curves): against steps, tokens and time.
CURVES = ("loss_vs_step", "loss_vs_tokens", "loss_vs_time")
# The table every section of one learning-rate sweep writes besides its kind's (tinylm.report.edge).
EDGE_TABLE = "edge_of_stability"


@dataclass(frozen=True)
class Kind:
    """What a kind of report section writes and reads, how the plan makes its sections, and where
    the code that builds one lives.

    `figures`: stems written as .png + .svg; `tables`: stems written as .csv + .md (the Snakemake
    rule declares exactly these files); `inputs`: the file options it needs (tinylm report --OPTION);
    `runs`: whether it is drawn from runs' curves (otherwise from its JSON inputs alone).

    Where its sections go: a kind with a `place` makes one section, named after the kind, at that
    place among the placed sections (which come first in the report, by place), when the config has
    the experiments it `requires`; its settings are config `experiments.<name>` when `experiment` is
    set, otherwise that name is reserved. A kind
    without a place makes one section per config experiment whose `report` names it, after the
    placed sections, in config order. `sweeps`: its experiments' runs are the baseline with their
    overrides and sweep, made by the plan before any section (see tinylm.pipeline.plan).

    `plan(planner, name, title)` returns the section's PlannedSection; `builder` names the module
    whose `build(section, inputs)` writes it.
    """

    name: str
    plan: Callable[[Planner, str, str], PlannedSection]
    builder: str
    figures: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    runs: bool = True
    place: int | None = None
    experiment: bool = False
    sweeps: bool = False
    title: str = ""              # the heading of its section when the config gives none
    requires: tuple[str, ...] = ()  # config experiments a placed section is made from: without them, none

    def tables_for(self, rate_sweeps: int) -> tuple[str, ...]:
        """The tables of a section of this kind with `rate_sweeps` sweeps over learning rates: one
        sweep's section states its edge of stability too."""
        return self.tables + ((EDGE_TABLE,) if rate_sweeps == 1 and EDGE_TABLE not in self.tables else ())

    def build(self, section: Section, inputs: Inputs) -> None:
        importlib.import_module(self.builder).build(section, inputs)


def discover() -> dict[str, Kind]:
    """Every kind of this package, placed kinds first (by place), then the others by name."""
    found = [importlib.import_module(f"{__name__}.{module.name}").KIND
             for module in pkgutil.iter_modules(__path__) if module.ispkg]
    found.sort(key=lambda kind: (kind.place is None, kind.place or 0, kind.name))
    return {kind.name: kind for kind in found}
