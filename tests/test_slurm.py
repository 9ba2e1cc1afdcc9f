"""The pipeline on a real Slurm cluster: profiles/slurm, one sbatch job per rule, same results.

A single-node cluster (munged, slurmctld, slurmd; tests/cluster/slurm_cluster.py) runs on localhost
for this module. The test config goes through profiles/slurm, with only the placeholders filled in
and the squeue status command switched on, as its README tells a user of a cluster without
accounting. Every job that is not a declared local rule must have gone through `sbatch` and
completed in Slurm, and the results must equal a local run of the same targets (training on CPU is
deterministic; timings and memory readings are left out of the comparison).

Needs root, Debian's apt (slurm-wlm, munge) and PyPI; skips with the reason otherwise. The executor
plugin is installed into .venv-slurm/ and put on PYTHONPATH for these runs only: where it can be
imported, every snakemake start asks `scontrol` for the cluster's MinJobAge, which takes ~9 s when a
Slurm configuration exists but no controller answers, and the other tests should not pay for that.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.slurm_cluster import ClusterUnavailable, SlurmCluster, ensure_installed

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / ".venv-slurm"
PLUGIN_REQUIREMENTS = ("snakemake-executor-plugin-slurm>=2.0,<3", "snakemake-executor-plugin-slurm-jobstep>=0.6,<1")
PLUGIN_MODULES = ("snakemake_executor_plugin_slurm", "snakemake_executor_plugin_slurm_jobstep")
# Every stage that runs on a cluster node: download, BPE training, tokenization, training of two
# runs (one with a learning rate that may diverge) and evaluation.
TARGETS = ("results/runs/baseline/eval.json", "results/runs/lr_sweep-lr=1/summary.json")
SNAKEMAKE_TIMEOUT_S = 300
# Readings of the clock and of memory differ between two runs; everything else must not.
VOLATILE_KEY = re.compile(r"time|_per_s|mem")


def _import_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "; ".join(f"import {module}" for module in PLUGIN_MODULES)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def plugin_env() -> dict[str, str]:
    """The environment that makes the Slurm executor plugin importable (installed on first use)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGIN_DIR), os.environ.get("PYTHONPATH")]))}
    if _import_check(env).returncode != 0:
        install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
                                  "--target", str(PLUGIN_DIR), *PLUGIN_REQUIREMENTS], capture_output=True, text=True)
        if install.returncode != 0:
            pytest.skip(f"cannot install the Slurm executor plugin from PyPI: {install.stderr.strip()[-500:]}")
        check = _import_check(env)
        assert check.returncode == 0, f"plugin installed into {PLUGIN_DIR} but not importable:\n{check.stderr}"
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the Slurm test needs root: it installs slurm-wlm and munge and starts their daemons")
    workdir = tmp_path_factory.mktemp("slurm")
    try:
        ensure_installed(workdir / "apt.log")
        cluster = SlurmCluster(workdir).start()
    except ClusterUnavailable as error:
        pytest.skip(f"cannot run a Slurm cluster here: {error}")
    try:
        yield cluster
    finally:
        cluster.stop()


def _filled_profile(cluster: SlurmCluster, directory: Path) -> Path:
    """profiles/slurm with its placeholders filled in for the test cluster and squeue status on."""
    text = (REPO / "profiles" / "slurm" / "profile.yaml").read_text()
    for placeholder in ("YOUR_ACCOUNT", "YOUR_CPU_PARTITION", "YOUR_GPU_PARTITION"):
        assert placeholder in text, f"profiles/slurm/profile.yaml no longer has {placeholder}: update this test"
    text = text.replace("YOUR_ACCOUNT", "tinylm").replace("YOUR_CPU_PARTITION", cluster.partition)
    text = text.replace("YOUR_GPU_PARTITION", cluster.partition)
    assert "# slurm-status-command: squeue" in text
    text = text.replace("# slurm-status-command: squeue", "slurm-status-command: squeue")
    directory.mkdir()
    (directory / "profile.yaml").write_text(text)
    return directory


def _snakemake(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(REPO / "config" / "test.yaml"), *args, *TARGETS]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=SNAKEMAKE_TIMEOUT_S)
    (workdir / "snakemake.out").write_text(result.stdout + result.stderr)
    return result


def _comparable(path: Path):
    """A file's content without the readings that legitimately differ between runs."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not VOLATILE_KEY.search(k)}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    if path.suffix == ".json":
        return strip(json.loads(path.read_text()))
    if path.suffix == ".jsonl":
        return [strip(json.loads(line)) for line in path.read_text().splitlines()]
    if path.suffix == ".pt":
        import torch
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {key: value.tolist() if hasattr(value, "tolist") else value for key, value in state.items()}
    return path.read_bytes()


def _result_files(workdir: Path) -> dict[str, Path]:
    """Every declared result, by path relative to `workdir` (logs and checkpoints are not results)."""
    results = workdir / "results"
    return {str(p.relative_to(workdir)): p for p in sorted(results.rglob("*"))
            if p.is_file() and p.relative_to(results).parts[0] not in ("logs", "checkpoints", "cache")}


def test_pipeline_on_slurm_equals_local_run(cluster, plugin_env, shared_data, tmp_path):
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_dir.mkdir()
    local_dir.mkdir()
    profile = _filled_profile(cluster, tmp_path / "profile")

    run = _snakemake(slurm_dir, "--profile", str(profile), "--slurm-init-seconds-before-status-checks", "2",
                     "--slurm-keep-successful-logs", env={**plugin_env, **cluster.env})
    assert run.returncode == 0, f"Slurm run failed:\n{run.stderr[-4000:]}\n{cluster.logs_tail()}"
    log = run.stdout + run.stderr

    # Which jobs ran where: "rule X:" is a remote job, "localrule X:" ran in the snakemake process.
    remote_rules = re.findall(r"^rule (\w+):", log, flags=re.M)
    local_rules = set(re.findall(r"^localrule (\w+):", log, flags=re.M))
    submissions = dict(re.findall(r"^Job (\d+) has been submitted with SLURM jobid (\d+)", log, flags=re.M))
    assert {"download", "train_bpe", "tokenize", "train", "evaluate"} <= set(remote_rules), log[-3000:]
    assert local_rules <= {"write_run_config"}, f"unexpected local rules: {local_rules}"
    assert len(submissions) == len(remote_rules), "a remote job has no Slurm job id in the log"

    # Slurm's side: each of those job ids ran and completed, and left its log.
    states = dict(line.split("|") for line in
                  cluster.client("squeue", "--noheader", "--states=all", "--format=%i|%T").stdout.split())
    for snakemake_id, slurm_id in submissions.items():
        assert states.get(slurm_id) == "COMPLETED", f"Slurm job {slurm_id}: {states.get(slurm_id)}"
    slurm_logs = list((slurm_dir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert sorted(p.stem for p in slurm_logs) == sorted(submissions.values())

    local = _snakemake(local_dir, "--cores", "2")
    assert local.returncode == 0, f"local run failed:\n{local.stderr[-4000:]}"

    slurm_files, local_files = _result_files(slurm_dir), _result_files(local_dir)
    assert sorted(slurm_files) == sorted(local_files)
    assert any(name.endswith("metrics.jsonl") for name in slurm_files)
    for name in slurm_files:
        assert _comparable(slurm_files[name]) == _comparable(local_files[name]), f"{name} differs"
