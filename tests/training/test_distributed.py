"""`training.devices: 2`: two gloo processes under torchrun follow the single-process trajectory."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from tiny_run import (
    TRAJECTORY_KEYS,
    one_thread,
    read_metrics,
    read_summary,
    signal_after_first_checkpoint,
    start_train,
    train,
    write_config,
)

from tinylm.checkpoint import load_training_state
from tinylm.training.runlock import run_lock
from tinylm.training.trainer import EXIT_PREEMPTED

pytestmark = pytest.mark.slow
TRAINING = {"max_steps": 100, "log_interval": 5, "eval_interval": 20, "checkpoint_interval": 10}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    with one_thread():
        assert train(write_config(root, training=TRAINING), root / "out", root / "ckpt") == 0
    return root / "out"


def two_process_config(tmp_path):
    return write_config(tmp_path, training={**TRAINING, "devices": 2})


def assert_same_trajectory(out_dir, reference_out):
    """Same steps, tokens and schedule exactly; losses and norms up to float reduction order."""
    ours, theirs = read_metrics(out_dir), read_metrics(reference_out)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]  # rank 0 alone wrote: no duplicates
    for mine, single in zip(ours, theirs):
        for key in TRAJECTORY_KEYS:
            if isinstance(single[key], float):
                assert mine[key] == pytest.approx(single[key], rel=1e-4, abs=1e-6), (mine["step"], key)
            else:
                assert mine[key] == single[key], (mine["step"], key)
    assert read_summary(out_dir)["final_val_loss"] == pytest.approx(
        read_summary(reference_out)["final_val_loss"], rel=1e-4)


def test_two_processes_follow_the_single_process_trajectory(tmp_path, single_process):
    process = start_train(two_process_config(tmp_path), tmp_path / "out", tmp_path / "ckpt")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert_same_trajectory(tmp_path / "out", single_process)
    summary = read_summary(tmp_path / "out")
    assert summary["processes"] == 2 and summary["status"] == "completed"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["training"]["devices"] == 2


def test_sigterm_then_resume_under_two_processes(tmp_path, single_process):
    config = two_process_config(tmp_path)
    process = start_train(config, tmp_path / "out", tmp_path / "ckpt")
    signal_after_first_checkpoint(process, tmp_path / "ckpt", signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_PREEMPTED, stderr
    assert load_training_state(tmp_path / "ckpt" / "checkpoint.pt")["progress"].step < TRAINING["max_steps"]
    assert not (tmp_path / "out" / "summary.json").exists()

    process = start_train(config, tmp_path / "out", tmp_path / "ckpt")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "resuming" in stderr
    assert_same_trajectory(tmp_path / "out", single_process)


def test_a_killed_launcher_leaves_no_worker_and_no_second_writer(tmp_path):
    """SIGKILL the pid the lock names (the launching `tinylm train`): torchrun and its workers die
    with it, so the run's files stop changing and the lock is free for the next trainer only then."""
    config = write_config(tmp_path, training={**TRAINING, "max_steps": 5000, "devices": 2})
    process = start_train(config, tmp_path / "out", tmp_path / "ckpt")
    signal_after_first_checkpoint(process, tmp_path / "ckpt", signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _processes_of(config) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_of(config), "a worker outlived its launcher"
    metrics = tmp_path / "out" / "metrics.jsonl"
    before = metrics.read_bytes()
    time.sleep(1.0)
    assert metrics.read_bytes() == before  # nobody writes any more
    with run_lock(tmp_path / "ckpt"):  # and the lock is free
        pass


def _processes_of(config) -> list[int]:
    """Processes whose command line names `config` (the launcher, torchrun, the workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(config) in command:
                found.append(int(entry.name))
    return found
