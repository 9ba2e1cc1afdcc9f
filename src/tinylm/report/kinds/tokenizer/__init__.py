"""The tokenizers section: how each tokenizer trained and how well it compresses each corpus,
from `tinylm tokenizer-report` alone."""
from __future__ import annotations

from tinylm.pipeline.plan import PlannedSection, Planner
from tinylm.report.kinds import Kind

NAME = "tokenizer"


def plan(planner: Planner, name: str, title: str) -> PlannedSection:
    return PlannedSection(name, title, NAME)


KIND = Kind(NAME, plan, f"{__name__}.section", figures=("compression",), tables=("tokenizers", "compression"),
            inputs=("tokenizer_report",), runs=False, place=0, title="Tokenizers")
