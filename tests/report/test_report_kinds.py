"""Kinds of report section (tinylm.report.kinds): each is one package that declares its files,
plans its sections and builds them, so a new kind touches no other module; the planner stays light."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from small_plan import small_config
from tiny_run import write_run

from tinylm.cli import main
from tinylm.pipeline.plan import BASELINE_RUN, PlannedSection, Planner, build_plan
from tinylm.report import KINDS
from tinylm.report.findings import best_run, runs_frame
from tinylm.report.kinds import Kind
from tinylm.report.section import Inputs, Section
from tinylm.report.tables import Column, fmt_loss
from tinylm.training.summary import SUMMARY

REPO = Path(__file__).resolve().parents[2]


# ---- a toy kind, all in this module: its planning, text and table ------------------------------

def plan_best_rate(planner: Planner, name: str, title: str) -> PlannedSection:
    """The learning-rate sweep's runs once more, to name the best."""
    runs = planner.experiment_runs("lr_sweep")
    return PlannedSection(name, title, "best_rate", "Which rate ends lowest.", dict(runs.labels))


def build(section: Section, inputs: Inputs) -> None:
    best = best_run(inputs.runs)
    section.paragraph(f"{section.description} {best.label} does, at {fmt_loss(best.summary.final_val_loss)}.")
    section.table(runs_frame(inputs.runs), [Column("run", "run"), Column(SUMMARY.final_val_loss, "final", fmt_loss)],
                  "losses", "Final losses")


BEST_RATE = Kind("best_rate", plan_best_rate, __name__, tables=("losses",), place=4, title="Best rate")


def plan_notes(planner: Planner, name: str, title: str) -> PlannedSection:
    runs = planner.experiment_runs(name)
    return PlannedSection(name, title, "notes", planner.described(name), dict(runs.labels), runs.baseline)


# One section per experiment whose `report` names it, like variant and corpus.
NOTES = Kind("notes", plan_notes, __name__, sweeps=True)


@pytest.fixture
def toy_kinds(monkeypatch):
    monkeypatch.setitem(KINDS, BEST_RATE.name, BEST_RATE)
    monkeypatch.setitem(KINDS, NOTES.name, NOTES)


def test_a_new_kind_is_one_module_planned_and_built(toy_kinds, tmp_path):
    config = small_config(wide={"overrides": {"model.d_ff": 64}})
    plan = build_plan(config)
    assert list(plan.sections) == ["tokenizer", "lr_sweep", "batch_size", "generate", "best_rate", "wide"]
    section = plan.sections["best_rate"]
    assert (section.title, section.kind) == ("4. Best rate", "best_rate")
    assert section.runs == plan.sections["lr_sweep"].runs
    assert plan.sections["wide"].title == "5. wide"

    runs = {name: write_run(tmp_path / "runs" / name, lr, final)
            for name, lr, final in (("low", 1e-3, 2.5), ("high", 1e-2, 2.1))}
    out = tmp_path / "report" / "best_rate"
    args = ["report", "best_rate", "--out-dir", str(out), "--title", section.title,
            "--description", section.description]
    for name, run_dir in runs.items():
        args += ["--run", f"lr of {name}", str(run_dir)]
    assert main(args) == 0
    text = (out / "section.md").read_text()
    assert text.startswith("## 4. Best rate\n") and "Which rate ends lowest. lr of high does, at 2.100." in text
    assert list(pd.read_csv(out / "losses.csv")[SUMMARY.final_val_loss]) == [2.5, 2.1]


def test_an_experiment_names_its_kind(toy_kinds):
    config = small_config(remarks={"overrides": {"model.d_ff": 64}, "label": "wider"})
    config["experiments"]["remarks"]["report"] = "notes"  # the schema lists the shipped kinds
    section = build_plan(config).sections["remarks"]
    assert (section.kind, section.title, section.baseline) == ("notes", "5. wider", BASELINE_RUN)
    assert section.description == "wider (d_ff=64) against the baseline."
    config["experiments"]["remarks"]["report"] = "lr_sweep"  # a placed kind has a section of its own
    with pytest.raises(ValueError, match=r"^config experiments\.remarks\.report: unknown report kind 'lr_sweep'"):
        build_plan(config)


def test_the_report_order_is_the_kinds_places_and_run_names_do_not_follow_it(monkeypatch):
    before = build_plan(small_config(wide={"overrides": {"model.d_ff": 64}}))
    monkeypatch.setitem(KINDS, "generate", dataclasses.replace(KINDS["generate"], place=-1))
    after = build_plan(small_config(wide={"overrides": {"model.d_ff": 64}}))
    assert list(after.sections) == ["generate", "tokenizer", "lr_sweep", "batch_size", "wide"]
    assert [s.title for s in after.sections.values()][:2] == ["0. Generation", "1. Tokenizers"]
    assert list(after.runs) == list(before.runs)
    assert {name: s.runs for name, s in after.sections.items()} == {name: s.runs for name, s in before.sections.items()}


def test_every_kind_is_a_package_with_a_builder():
    assert list(KINDS) == ["tokenizer", "lr_sweep", "batch_size", "generate", "edge_scale", "corpus", "variant"]
    for name, kind in KINDS.items():
        package = sys.modules[f"tinylm.report.kinds.{name}"]
        assert package.KIND is kind and kind.name == name
        assert kind.builder == f"tinylm.report.kinds.{name}.section"
        assert (Path(package.__file__).parent / "section.py").is_file()


def test_the_generate_section_names_the_corpus_of_its_runs():
    plan = build_plan(small_config())
    assert plan.sections["generate"].description == "the non-diverged ts run with the lowest final validation loss"


def test_planning_imports_nothing_heavy():
    """The Snakefile imports the plan and the kinds' declarations and plans every section."""
    code = ("import sys\n"
            "import tinylm.pipeline.plan\n"
            "assert not {'torch', 'pandas', 'matplotlib'} & set(sys.modules), 'import'\n"
            "from tinylm.pipeline.config import resolve_config\n"
            "from tinylm.report import KINDS\n"
            "tinylm.pipeline.plan.build_plan(resolve_config(['config/reference.yaml']), largest_batch=256)\n"
            "assert not {'torch', 'pandas', 'matplotlib'} & set(sys.modules), 'planning'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_summary_fields_are_named_by_summary_not_spelled():
    """A summary field's name as a quoted string lives in the module that owns the file (and in
    `tinylm generate`, which copies the run's fields into its output)."""
    spelled = [path for path in (REPO / "src").rglob("*.py")
               if re.search(r"[\"']final_val_loss[\"']", path.read_text(encoding="utf-8"))]
    assert len(spelled) <= 2 and REPO / "src/tinylm/training/summary.py" in spelled, spelled
