"""`tinylm refine-rates`: one round of a learning-rate sweep's refinement, the rate to add if any.

    tinylm refine-rates --run lr=1e-2 results/runs/lr_sweep-lr=1e-2 ... --refine-to 1.5 --step 3.16 --out round-0.json

From the finished runs of the sweep so far it finds the bracket the edge of stability lies in (the
largest rate that trains, the smallest that fails: tinylm.report.edge) and proposes its geometric
midpoint, until the bracket's ratio is at most `--refine-to`. A sweep where nothing fails above the
best rate extends upward by `--step`; one where every rate fails, downward. Rates are rounded to two
significant digits, so that run names stay short; a rate already tried ends the refinement.
"""
from __future__ import annotations

import argparse
import math

from tinylm.files import write_json_atomic


def next_rate(tried: list[float], largest_stable: float | None, smallest_failing: float | None,
              refine_to: float, step: float) -> float | None:
    """The rate to add to a sweep that tried `tried`, or None when its edge is bracketed closely enough."""
    if smallest_failing is None:
        candidate = max(tried) * step
    elif largest_stable is None:
        candidate = min(tried) / step
    elif smallest_failing / largest_stable <= refine_to:
        return None
    else:
        candidate = math.sqrt(largest_stable * smallest_failing)
    candidate = float(f"{candidate:.2g}")
    return None if any(math.isclose(candidate, rate, rel_tol=1e-9) for rate in tried) else candidate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", nargs=2, action="append", default=[], metavar=("LABEL", "RUN_DIR"), required=True,
                        help="a finished run of the sweep; repeat for each")
    parser.add_argument("--refine-to", type=float, required=True,
                        help="stop once the smallest failing rate is at most this many times the largest that trains")
    parser.add_argument("--step", type=float, required=True,
                        help="the factor to extend the sweep by when no rate (or every rate) fails")
    parser.add_argument("--out", required=True, help="JSON: the bracket found and the next rate (null: done)")


def run(args: argparse.Namespace) -> int:
    from tinylm.report.edge import edge_of_stability
    from tinylm.report.runs import load_runs

    for option in ("refine_to", "step"):
        value = getattr(args, option)
        if not (math.isfinite(value) and value > 1):
            raise ValueError(f"--{option.replace('_', '-')}: must be a number > 1, got {value:g}")
    runs = load_runs([tuple(pair) for pair in args.run])
    edge = edge_of_stability(runs)
    stable = edge.largest_stable.lr if edge.largest_stable else None
    failing = edge.smallest_failing.lr if edge.smallest_failing else None
    tried = sorted(run.lr for run in runs)
    decision = {"rates": tried, "largest_stable_lr": stable, "smallest_failing_lr": failing,
                "bracket_ratio": edge.bracket_ratio,
                "next": next_rate(tried, stable, failing, args.refine_to, args.step)}
    write_json_atomic(args.out, decision)
    print(f"tried {len(tried)} rates; bracket {stable} .. {failing}; next {decision['next']}")
    return 0
