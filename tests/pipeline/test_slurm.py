"""The pipeline on a real Slurm cluster: profiles/slurm, one sbatch job per rule, same results.

A single-node cluster (munged, slurmctld, slurmd; tests/cluster/slurm_cluster.py) runs on localhost
for this module. The test config goes through profiles/slurm, with only the placeholders filled in
and the squeue status command switched on, as its README tells a user of a cluster without
accounting. Every job that is not a declared local rule must have gone through `sbatch` and
completed in Slurm. The baseline's training job is requeued mid-run, as Slurm does to a preempted
job (SIGTERM, back to the queue), and must resume from its checkpoint. The results must equal a
local run of the same targets (training on CPU is deterministic; timings and memory readings are
left out of the comparison).

Needs root, Debian's apt (slurm-wlm, munge) and PyPI; skips with the reason otherwise. The executor
plugin is installed into .venv-slurm/ and put on PYTHONPATH for these runs only: where it can be
imported, every snakemake start asks `scontrol` for the cluster's MinJobAge, which takes ~9 s when a
Slurm configuration exists but no controller answers, and the other tests should not pay for that.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster.slurm_cluster import ClusterUnavailable, SlurmCluster, ensure_installed
from cluster.workflow import (
    INTERRUPTIBLE_TRAINING,
    REPO,
    assert_same_results,
    result_files,
    run_snakemake,
    snakemake_command,
    write_config,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PLUGIN_DIR = REPO / ".venv-slurm"
PLUGIN_REQUIREMENTS = ("snakemake-executor-plugin-slurm>=2.0,<3", "snakemake-executor-plugin-slurm-jobstep>=0.6,<1")
PLUGIN_MODULES = ("snakemake_executor_plugin_slurm", "snakemake_executor_plugin_slurm_jobstep")
# One report section: every kind of job (download, BPE training, tokenization, run configs, training,
# evaluation, report), two runs, a few minutes in all.
TARGETS = ("lr_sweep",)
REMOTE_RULES = {"train_bpe", "tokenize", "train", "evaluate"}
LOCAL_RULES = {"download", "write_run_config", "report_lr_sweep", "lr_sweep"}  # declared local in the workflow
CHECKPOINT = "results/checkpoints/baseline/checkpoint.pt"
TIMEOUT_S = 300


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


def _requeue_baseline_training(cluster: SlurmCluster, snakemake: subprocess.Popen, workdir: Path) -> str:
    """Once the baseline's training job has saved a checkpoint, requeue it as a preemption would
    (SIGTERM, then back to the queue); return its Slurm job id."""
    deadline = time.monotonic() + TIMEOUT_S
    jobs = []
    while time.monotonic() < deadline and snakemake.poll() is None:
        if (workdir / CHECKPOINT).exists():
            # The plugin's job comment names the rule and its wildcards.
            jobs = cluster.client("squeue", "--noheader", "--format=%i|%T|%k").stdout.split()
            running = [job.split("|")[0] for job in jobs if job.endswith("|RUNNING|rule_train_wildcards_baseline")]
            if running:
                cluster.client("scontrol", "requeue", running[0])
                return running[0]
        time.sleep(0.05)
    raise AssertionError(f"no running baseline training job with a checkpoint (snakemake exit status "
                         f"{snakemake.poll()}; jobs id|state|comment: {jobs})")


def test_pipeline_on_slurm_equals_local_run(cluster, plugin_env, tmp_path):
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_dir.mkdir()
    local_dir.mkdir()
    profile = _filled_profile(cluster, tmp_path / "profile")
    config = write_config(tmp_path / "config.yaml", training=INTERRUPTIBLE_TRAINING)

    command = snakemake_command(slurm_dir, config, "--profile", str(profile), "--slurm-keep-successful-logs",
                                "--slurm-init-seconds-before-status-checks", "2", *TARGETS)
    with open(slurm_dir / "snakemake.out", "w") as out:
        # plugin_env last: cluster.env copies os.environ, whose own PYTHONPATH would drop the plugin's.
        snakemake = subprocess.Popen(command, env={**cluster.env, **plugin_env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            preempted = _requeue_baseline_training(cluster, snakemake, slurm_dir)
            snakemake.wait(TIMEOUT_S)
        finally:
            if snakemake.poll() is None:
                snakemake.terminate()  # it cancels its Slurm jobs on the way out
                snakemake.wait()
    log = (slurm_dir / "snakemake.out").read_text()
    assert snakemake.returncode == 0, f"Slurm run failed:\n{log[-4000:]}\n{cluster.logs_tail()}"

    # Which jobs ran where: "rule X:" is a remote job, "localrule X:" ran in the snakemake process.
    remote_rules = re.findall(r"^rule (\w+):", log, flags=re.M)
    local_rules = set(re.findall(r"^localrule (\w+):", log, flags=re.M))
    slurm_ids = re.findall(r"^Job \d+ has been submitted with SLURM jobid (\d+)", log, flags=re.M)
    assert set(remote_rules) == REMOTE_RULES, log[-3000:]
    assert local_rules <= LOCAL_RULES, f"unexpected local rules: {local_rules - LOCAL_RULES}"
    assert len(slurm_ids) == len(remote_rules), "a remote job has no Slurm job id in the log"

    # Slurm's side: each of those job ids ran and completed (the preempted one after its requeue)
    # and left its log.
    states = dict(line.split("|") for line in
                  cluster.client("squeue", "--noheader", "--states=all", "--format=%i|%T").stdout.split())
    for slurm_id in slurm_ids:
        assert states.get(slurm_id) == "COMPLETED", f"Slurm job {slurm_id}: {states.get(slurm_id)}"
    restarts = cluster.client("scontrol", "show", "job", preempted).stdout
    assert "Restarts=1" in restarts, restarts
    slurm_logs = list((slurm_dir / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert sorted(p.stem for p in slurm_logs) == sorted(slurm_ids)
    train_log = (slurm_dir / "results" / "logs" / "train" / "baseline.log").read_text()
    resumed = re.search(r"resuming baseline from \S+ at step (\d+)", train_log)
    assert resumed and int(resumed[1]) > 0, "the requeued training started over"

    local = run_snakemake(local_dir, config, "--cores", "2", *TARGETS)
    assert local.returncode == 0, f"local run failed:\n{local.stderr[-4000:]}"
    # Report pages show timings, so of those only the list of files must agree.
    names = list(result_files(slurm_dir))
    assert names == list(result_files(local_dir))
    assert any(name.endswith("metrics.jsonl") for name in names)
    assert_same_results(slurm_dir, local_dir, [name for name in names if not name.startswith("results/report/")])
