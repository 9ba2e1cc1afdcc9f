"""Running the pipeline in a temporary directory and comparing two runs' results.

Shared by the Slurm test and the fault tests: both run the real Snakefile on a derived test config
and check that results equal those of another run, up to the readings of clock and memory.
"""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# These tests run `python -m snakemake`; where it is not installed (a bare GPU machine) they skip.
pytest.importorskip("snakemake", reason="the pipeline tests need snakemake")

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO / "config" / "test.yaml"
# A baseline run long enough (a few seconds) to be interrupted between checkpoints.
INTERRUPTIBLE_TRAINING = {"max_steps": 600, "checkpoint_interval": 50, "eval_interval": 200, "log_interval": 25}
# Readings of the clock and of memory differ between two runs; everything else must not.
VOLATILE_KEY = re.compile(r"time|_per_s|mem|provenance")  # provenance: when, where, by which command


def write_config(path: Path, training: dict | None = None, optimizer: dict | None = None) -> Path:
    """config/test.yaml with the baseline run's settings updated, writing results/ of the working
    directory (which holds this config alone). Its corpora stay the embedded samples: relative
    sources are relative to the repository, whose Snakefile runs."""
    config = {"results_dir": "results", **yaml.safe_load(TEST_CONFIG.read_text())}
    baseline = copy.deepcopy(config["baseline"])
    baseline.setdefault("training", {}).update(training or {})
    baseline.setdefault("optimizer", {}).update(optimizer or {})
    config["baseline"] = baseline
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_command(workdir: Path, configfile: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(configfile), *args]


def run_snakemake(workdir: Path, configfile: Path, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 300) -> subprocess.CompletedProcess:
    """Run snakemake to the end; its output is also kept in `workdir/snakemake.out`."""
    result = subprocess.run(snakemake_command(workdir, configfile, *args), env=env, capture_output=True, text=True,
                            timeout=timeout)
    with open(workdir / "snakemake.out", "a") as out:
        out.write(result.stdout + result.stderr)
    return result


def comparable(path: Path):
    """A result file's content without the readings that legitimately differ between runs."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not VOLATILE_KEY.search(k)}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return value.tolist() if hasattr(value, "tolist") else value  # tensors compare by content

    if path.suffix == ".json":
        return strip(json.loads(path.read_text()))
    if path.suffix == ".jsonl":
        return [strip(json.loads(line)) for line in path.read_text().splitlines()]
    if path.suffix == ".pt":
        import torch
        return strip(torch.load(path, map_location="cpu", weights_only=True))
    return path.read_bytes()


def result_files(workdir: Path) -> dict[str, Path]:
    """Every result under `workdir/results` by relative path (logs, checkpoints and caches are not results)."""
    results = workdir / "results"
    return {str(p.relative_to(workdir)): p for p in sorted(results.rglob("*"))
            if p.is_file() and p.relative_to(results).parts[0] not in ("logs", "checkpoints", "cache")}


def assert_same_results(workdir: Path, reference: Path, names: list[str] | None = None) -> None:
    """The results of `workdir` equal those of `reference` (all of them, or just `names`)."""
    ours, theirs = result_files(workdir), result_files(reference)
    if names is None:
        assert sorted(ours) == sorted(theirs)
        names = list(ours)
    for name in names:
        assert comparable(ours[name]) == comparable(theirs[name]), f"{name} differs from {theirs[name]}"
