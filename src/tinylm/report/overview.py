"""The report's overview of every run: one table of runs (runs.csv) and one of the environments
that trained them, from the plan (`results/plan.json`, written by the pipeline) and each run's
summary.json and its `provenance`."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from tinylm.files import read_json
from tinylm.report.tables import Column, fmt_duration, fmt_int, fmt_loss, fmt_speed, write_table
from tinylm.training.outputs import RunFolder
from tinylm.training.summary import SUMMARY, Summary

RUN_COLUMNS = [
    Column("run", "run"), Column("sections", "sections"), Column("changes", "changes against the baseline"),
    Column(SUMMARY.status, "status"), Column(SUMMARY.steps, "steps", fmt_int),
    Column(SUMMARY.tokens, "tokens", fmt_int), Column(SUMMARY.time_s, "wall time", fmt_duration),
    Column(SUMMARY.compile_time_s, "of which compiling", fmt_duration),
    Column(SUMMARY.tokens_per_s, "tokens/s (training steps)", fmt_speed),
    Column(SUMMARY.final_val_loss, "final val loss", fmt_loss),
    Column(SUMMARY.best_val_loss, "best val loss", fmt_loss),
    Column(SUMMARY.params, "parameters", fmt_int),
]
SUMMARY_KEYS = [column.key for column in RUN_COLUMNS[3:]]
# The provenance keys that tell two environments apart, in table order.
ENVIRONMENT_KEYS = ("device_name", "torch_version", "cuda_version", "python_version", "tinylm_version",
                    "lock", "git_commit", "git_dirty", "hostname")


def runs_table(plan: dict, run_root: Path) -> pd.DataFrame:
    """One row per planned run, from its summary.json (the plan gives sections and changes)."""
    rows = []
    for name, run in plan["runs"].items():
        if not run["sections"]:  # planned before the probe answered, not trained
            continue
        summary = Summary.read(RunFolder(run_root / name).summary)
        rows.append({
            "run": name, "sections": ", ".join(run["sections"]), "changes": run["changes"] or "(the baseline)",
            **{key: getattr(summary, key) for key in SUMMARY_KEYS},
            # A value recorded as null (no CUDA on a CPU) reads "none".
            **{f"provenance.{k}": "none" if v is None else v
               for k, v in dataclasses.asdict(summary.provenance).items()},
        })
    return pd.DataFrame(rows).astype(object)


def environments_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct environment (device, library versions, code) and the runs it trained."""
    columns = [f"provenance.{key}" for key in ENVIRONMENT_KEYS]
    frame = runs[["run", *columns]]
    rows = []
    for values, group in frame.groupby(columns, sort=False, dropna=False):
        rows.append({**dict(zip(ENVIRONMENT_KEYS, values)), "runs": len(group), "run_names": ", ".join(group["run"])})
    return pd.DataFrame(rows).astype(object)


def write_overview(plan_path: Path, run_root: Path, out_dir: Path) -> str:
    """Write runs.csv/.md and environments.csv/.md into `out_dir`; the Markdown of both tables."""
    runs = runs_table(read_json(plan_path, "plan", expect=dict), run_root)
    provenance = tuple(c for c in runs.columns if c.startswith("provenance."))
    runs_md = write_table(runs, RUN_COLUMNS, out_dir, "runs", csv_only=provenance)
    envs = environments_frame(runs)
    envs_md = write_table(envs, [Column(k, k.replace("_", " ")) for k in ENVIRONMENT_KEYS] +
                          [Column("runs", "runs", fmt_int)], out_dir, "environments", csv_only=("run_names",))
    return (f"## Runs\n\nEvery run of the report ([CSV](runs.csv), sortable; provenance columns in the CSV).\n\n"
            f"{runs_md}\n## Environment\n\nWhere and with what the runs were trained "
            f"([CSV](environments.csv), with the run names).\n\n{envs_md}")
