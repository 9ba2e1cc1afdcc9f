"""Refined learning-rate sweeps: the rate each round adds, the plan with what refinement added, and
`tinylm refine-rates` on finished runs."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from tiny_run import write_run

from tinylm.cli import main
from tinylm.pipeline.config import parse_overrides, resolve_config
from tinylm.pipeline.plan import build_plan
from tinylm.pipeline.refine import next_rate


@pytest.mark.parametrize(("tried", "stable", "failing", "expected"), [
    ([1e-3, 3e-2, 0.1], 3e-2, 0.1, 5.5e-2),          # the geometric midpoint, to two significant digits
    ([1e-3, 3e-2, 5.5e-2], 3e-2, 5.5e-2, 4.1e-2),
    ([4.1e-2, 5.5e-2], 4.1e-2, 5.5e-2, None),        # 1.34 <= 1.5: bracketed closely enough
    ([1e-3, 1e-2], None, 1e-2, 3.3e-4),              # nothing trains below the failing rate: extend downward
    ([1e-3, 1e-2], 1e-2, None, 3e-2),                # nothing fails: extend upward by the step
])
def test_each_round_narrows_the_bracket_or_extends_the_sweep(tried, stable, failing, expected):
    got = next_rate(tried, stable, failing, refine_to=1.5, step=3.0)
    assert got == (None if expected is None else pytest.approx(expected))


def test_a_rate_already_tried_ends_the_refinement():
    assert next_rate([1e-2, 2e-2], 1e-2, 2e-2, refine_to=1.1, step=3) == pytest.approx(1.4e-2)
    assert next_rate([1e-2, 1.4e-2, 2e-2], 1e-2, 2e-2, refine_to=1.1, step=3) is None


def test_the_plan_adds_the_rates_refinement_found_and_says_what_follows():
    config = resolve_config(["config/config.yaml"])
    grid = build_plan(config)
    sweep = grid.rate_sweeps["lr_sweep"]
    assert sweep.grid == (1e-3, 3e-3, 1e-2, 3e-2, 0.1) and not sweep.complete and grid.pending_refinement("lr_sweep")
    assert grid.sweep_of_run("lr_sweep-lr=5.5e-2") is sweep and grid.sweep_of_run("nope") is None
    refined = build_plan(config, refinements={"lr_sweep": ((5.5e-2, 4.1e-2), True)})
    runs = refined.sections["lr_sweep"].runs
    assert list(runs)[-2:] == ["lr_sweep-lr=5.5e-2", "lr_sweep-lr=4.1e-2"] and runs["lr_sweep-lr=4.1e-2"] == "lr=4.1e-2"
    assert refined.runs["lr_sweep-lr=4.1e-2"].config.optimizer.lr == 4.1e-2
    assert not refined.pending_refinement("lr_sweep") and refined.pending_refinement("no_rmsnorm")
    # Everything else is as before: refinement adds runs, it renames none.
    assert set(grid.runs) <= set(refined.runs) and list(refined.sections) == list(grid.sections)


def test_the_edge_study_plans_one_refined_sweep_per_width_batch_and_norm():
    plan = build_plan(resolve_config(["config/edge.yaml"]))
    assert list(plan.sections) == ["tokenizer", "edge_scale"]  # no lr sweep configured: no sweep, no samples
    section = plan.sections["edge_scale"]
    assert len(section.rate_sweeps) == 3 * 2 * 2 and section.compare_with
    key = "edge_scale-d_model=256-batch=32-norm=none"
    sweep = plan.rate_sweeps[key]
    run = plan.runs[sweep.runs[1e-2]]
    m, t = run.config.model, run.config.training
    assert (m.d_model, m.d_ff, m.num_heads, m.norm) == (256, 688, 8, "none")
    assert (t.batch_size, run.config.optimizer.lr) == (32, 1e-2)
    assert sweep.runs[1e-2] == f"{key}-lr=1e-2" and sweep.step == pytest.approx(10 ** 0.5, rel=0.06)


def test_refine_rates_reads_the_runs_and_writes_the_next_rate(tmp_path):
    finals = {1e-3: 2.5, 3e-3: 2.2, 1e-2: 2.3, 3e-2: None}  # 3e-2 diverges: the edge lies in [1e-2, 3e-2]
    args = []
    for i, (lr, final) in enumerate(finals.items()):
        args += ["--run", f"lr={lr:g}", str(write_run(tmp_path / f"run{i}", lr, final))]
    out = tmp_path / "round-0.json"
    assert main(["refine-rates", *args, "--refine-to", "1.5", "--step", "3.16", "--out", str(out)]) == 0
    decision = json.loads(out.read_text())
    assert decision["largest_stable_lr"] == 1e-2 and decision["smallest_failing_lr"] == 3e-2
    assert decision["bracket_ratio"] == pytest.approx(3.0) and decision["next"] == pytest.approx(1.7e-2)


def test_the_readmes_gpu_edge_study_plans_the_logs_widths_beside_the_reference():
    """The README's command for the edge study on one GPU: its --config, applied to the reference
    config, adds the section at the log's width and batch and shares the reference's coinciding runs."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("make run CONFIG=config/reference.yaml "
                                                                          "SNAKEMAKE_ARGS='edge_scale"))
    make_args = dict(arg.split("=", 1) for arg in shlex.split(command)[2:])
    target, option, *pairs = shlex.split(make_args["SNAKEMAKE_ARGS"])
    assert (target, option, make_args["CONFIG"]) == ("edge_scale", "--config", "config/reference.yaml")
    plan = build_plan(resolve_config([make_args["CONFIG"]], parse_overrides(pairs)))
    section = plan.sections["edge_scale"]
    assert len(section.rate_sweeps) == 3 * 2 * 2
    log_sweep = plan.rate_sweeps["edge_scale-d_model=512-batch=128-norm=pre"]
    assert log_sweep.runs[3e-3] == "baseline" and log_sweep.runs[1e-2] == "lr_sweep-lr=1e-2"
    assert plan.rate_sweeps["edge_scale-d_model=512-batch=128-norm=none"].runs[3e-3] == "no_rmsnorm-lr=3e-3"
    assert plan.runs["baseline"].config.model.context_length == 256
