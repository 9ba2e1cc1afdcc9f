"""The report's overview of every run: one table of runs (runs.csv) and one of the environments
that trained them, from the plan (`results/plan.json`, written by the pipeline) and each run's
summary.json and its `provenance`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tinylm.files import read_json
from tinylm.report.tables import Column, fmt_duration, fmt_int, fmt_loss, fmt_speed, write_table

RUN_COLUMNS = [
    Column("run", "run"), Column("sections", "sections"), Column("changes", "changes against the baseline"),
    Column("status", "status"), Column("steps", "steps", fmt_int), Column("tokens", "tokens", fmt_int),
    Column("wall_time_s", "wall time", fmt_duration), Column("compile_time_s", "of which compiling", fmt_duration),
    Column("tokens_per_s", "tokens/s (training steps)", fmt_speed),
    Column("final_val_loss", "final val loss", fmt_loss), Column("best_val_loss", "best val loss", fmt_loss),
    Column("params", "parameters", fmt_int),
]
# The provenance keys that tell two environments apart, in table order.
ENVIRONMENT_KEYS = ("device_name", "torch_version", "cuda_version", "python_version", "tinylm_version",
                    "git_commit", "git_dirty", "hostname")
NOT_RECORDED = "not recorded"


def runs_frame(plan: dict, run_root: Path) -> pd.DataFrame:
    """One row per planned run, from its summary.json (the plan gives sections and changes)."""
    rows = []
    for name, run in plan["runs"].items():
        if not run["sections"]:  # planned before the probe answered, not trained
            continue
        summary = read_json(run_root / name / "summary.json", "run summary", expect=dict)
        rows.append({
            "run": name, "sections": ", ".join(run["sections"]), "changes": run["changes"] or "(the baseline)",
            "status": summary.get("status"), "steps": summary.get("steps"), "tokens": summary.get("tokens"),
            "wall_time_s": summary.get("time_s"), "compile_time_s": summary.get("compile_time_s"),
            "tokens_per_s": summary.get("tokens_per_s"),
            "final_val_loss": summary.get("final_val_loss"), "best_val_loss": summary.get("best_val_loss"),
            # A key recorded as null (no CUDA on a CPU) reads "none"; a key never recorded stays missing.
            "params": summary.get("params"),
            **{f"provenance.{k}": "none" if v is None else v for k, v in summary.get("provenance", {}).items()},
        })
    return pd.DataFrame(rows).astype(object)


def environments_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct environment (device, library versions, code) and the runs it trained."""
    columns = [f"provenance.{key}" for key in ENVIRONMENT_KEYS]
    frame = runs.reindex(columns=["run", *columns]).astype(object)
    frame[columns] = frame[columns].where(frame[columns].notna(), NOT_RECORDED)
    rows = []
    for values, group in frame.groupby(columns, sort=False, dropna=False):
        rows.append({**dict(zip(ENVIRONMENT_KEYS, values)), "runs": len(group), "run_names": ", ".join(group["run"])})
    return pd.DataFrame(rows).astype(object)


def write_overview(plan_path: Path, run_root: Path, out_dir: Path) -> str:
    """Write runs.csv/.md and environments.csv/.md into `out_dir`; the Markdown of both tables."""
    runs = runs_frame(read_json(plan_path, "plan", expect=dict), run_root)
    provenance = tuple(c for c in runs.columns if c.startswith("provenance."))
    runs_md = write_table(runs, RUN_COLUMNS, out_dir, "runs", csv_only=provenance)
    envs = environments_frame(runs)
    envs_md = write_table(envs, [Column(k, k.replace("_", " ")) for k in ENVIRONMENT_KEYS] +
                          [Column("runs", "runs", fmt_int)], out_dir, "environments", csv_only=("run_names",))
    return (f"## Runs\n\nEvery run of the report ([CSV](runs.csv), sortable; provenance columns in the CSV).\n\n"
            f"{runs_md}\n## Environment\n\nWhere and with what the runs were trained "
            f"([CSV](environments.csv), with the run names).\n\n{envs_md}")
