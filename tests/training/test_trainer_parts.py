"""The trainer's parts on their own: peak FLOP/s table, compile choice, divergence guard, stop rules,
progress records of old and foreign checkpoints, the run lock, stale outputs, provenance."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_run import (
    one_thread,
    read_metrics,
    read_summary,
    signal_after_first_checkpoint,
    start_train,
    train,
    write_config,
    write_summary,
)

from tinylm.checkpoint import load_training_state
from tinylm.config import ModelConfig, RunConfig, TrainingConfig
from tinylm.nn import build_model
from tinylm.optim import AdamW
from tinylm.training import provenance as provenance_module
from tinylm.training.divergence import INITIAL_LOSS_STEPS, DivergenceGuard, divergence_outcome, step_is_good
from tinylm.training.hardware import keep_freed_host_memory, use_compile
from tinylm.training.outputs import FILES, RESULTS
from tinylm.training.peak_flops import peak_flops
from tinylm.training.progress import Progress
from tinylm.training.runlock import run_lock
from tinylm.training.step import TrainingStep
from tinylm.training.stopping import PreemptionFlag, budget_reached, checkpoint_due, target_reached
from tinylm.training.summary import SUMMARY, Summary

PROVENANCE_KEYS = {"git_commit", "git_dirty", "tinylm_version", "torch_version", "python_version",
                   "device_name", "cuda_version", "hostname", "started_at"}


@pytest.fixture(autouse=True)
def single_threaded():
    with one_thread():
        yield


@pytest.mark.parametrize(("name", "bf16"), [
    ("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989.4e12), ("NVIDIA H200 NVL", 835e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12), ("NVIDIA L40S", 362.05e12), ("NVIDIA L4", 121e12),
    ("NVIDIA A10", 125e12), ("NVIDIA GeForce RTX 4090", 165.2e12), ("NVIDIA GeForce RTX 3090", 71e12),
    ("NVIDIA B200", 2250e12), ("AMD Instinct MI300X", 1307.4e12),
])
def test_peak_flops_of_known_gpus(name, bf16):
    assert peak_flops(name, "bf16") == bf16
    fp32 = peak_flops(name, "fp32")
    assert fp32 is None or 0 < fp32 < bf16


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA L40", "NVIDIA GeForce RTX 3090 Ti", "NVIDIA H800",
                                  "NVIDIA GeForce RTX 4090 D", "Tesla V100-SXM2-16GB", "NVIDIA A40", ""])
def test_unknown_or_lookalike_gpus_have_no_peak(name):
    """A near miss (another chip with a similar name) must not borrow a wrong peak."""
    assert peak_flops(name, "bf16") is None


def test_compile_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert use_compile("auto", cuda) and not use_compile("auto", cpu)
    assert use_compile(True, cpu) and not use_compile(False, cuda)
    assert RunConfig().training.compile == "auto"
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="training.compile"):
            TrainingConfig(max_steps=1, compile=bad).validate()
    with pytest.raises(ValueError, match="training.peak_flops"):
        TrainingConfig(max_steps=1, peak_flops=float("inf")).validate()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_host_memory_is_reused_without_page_faults():
    def faults_of_a_step():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffers = [torch.ones(2 << 20) for _ in range(4)]  # 4 x 8 MiB alive at once, as in a step
        del buffers
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    assert keep_freed_host_memory()
    # The heap grows to the step's peak over the first few steps (how many depends on what the
    # process allocated before); after that, a step reuses it. Handed back to the OS, as glibc may
    # do by default, every step would fault in all 8192 pages again.
    faults = [faults_of_a_step() for _ in range(16)]
    assert sum(faults[-8:]) < (8 << 20) // resource.getpagesize(), faults


def test_step_is_good_rule():
    one = torch.tensor(1.0)
    assert step_is_good(torch.tensor(2.0), one, torch.tensor(1.0), 2.0)
    assert not step_is_good(torch.tensor(2.01), one, torch.tensor(1.0), 2.0)
    assert not step_is_good(torch.tensor(float("nan")), one, torch.tensor(1.0), 2.0)
    assert not step_is_good(torch.tensor(1.0), torch.tensor(float("inf")), torch.tensor(1.0), 2.0)


def _losses_through(guard: DivergenceGuard, losses: list[float], first_step: int = 1) -> None:
    for step, loss in enumerate(losses, start=first_step):
        guard.check(step, torch.tensor(loss), torch.tensor(1.0))


def test_guard_takes_the_untrained_models_noisy_batches_for_what_they_are():
    """The untrained default model without any norm (seed 0, bf16): its batch losses of the first
    steps at lr 1e-9. Step 14's batch is 2.2x the largest of the first ten; the run has not diverged."""
    guard = DivergenceGuard(2.0, torch.device("cpu"))
    _losses_through(guard, [14.3, 20.4, 18.3, 20.7, 19.2, 13.9, 15.6, 23.5, 23.1, 28.2, 16.5, 26.8, 22.5, 62.3,
                            22.8, 25.8, 30.4, 17.6, 28.3, 24.5])
    assert guard.read() is None


def test_guard_catches_a_sustained_rise_but_not_one_outlier_batch():
    guard = DivergenceGuard(2.0, torch.device("cpu"))
    _losses_through(guard, [10.0] * INITIAL_LOSS_STEPS)
    assert float(guard.initial_loss) == pytest.approx(10.0)
    _losses_through(guard, [100.0, 10.0], first_step=INITIAL_LOSS_STEPS + 1)  # smoothed: 19, then 18.1
    assert guard.read() is None and float(guard.initial_loss) == pytest.approx(10.0)
    _losses_through(guard, [40.0], first_step=INITIAL_LOSS_STEPS + 3)  # smoothed 20.29 > 2 x 10
    assert guard.read() == (INITIAL_LOSS_STEPS + 3, 40.0, 1.0)


def test_guard_catches_a_blow_up_within_the_first_steps():
    guard = DivergenceGuard(2.0, torch.device("cpu"))
    _losses_through(guard, [8.0, 1000.0])  # a bad step does not raise the reference it is judged by
    assert guard.read() == (2, 1000.0, 1.0) and float(guard.initial_loss) == 8.0


def test_a_guard_restored_from_its_numbers_judges_like_the_uninterrupted_one():
    losses = [7.0, 9.0, 8.0, 12.0, 7.5, 8.5, 9.5, 7.0, 6.0, 6.5, 11.0, 14.0, 30.0, 60.0, 90.0, 120.0]
    whole = DivergenceGuard(2.0, torch.device("cpu"))
    _losses_through(whole, losses)
    first = DivergenceGuard(2.0, torch.device("cpu"))
    _losses_through(first, losses[:6])
    resumed = DivergenceGuard(2.0, torch.device("cpu"), float(first.initial_loss), float(first.smoothed_loss))
    _losses_through(resumed, losses[6:], first_step=7)
    assert resumed.read() == whole.read() is not None
    assert torch.equal(resumed.smoothed_loss, whole.smoothed_loss)
    assert torch.equal(resumed.initial_loss, whole.initial_loss)


@pytest.mark.parametrize(("on_host", "compiled"), [(True, False), (False, False), (False, True)],
                         ids=["skipped on the host", "undone in the eager update", "undone in the compiled update"])
def test_guard_undoes_the_bad_update_and_every_later_one(on_host, compiled):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=16, context_length=8, d_model=8, num_layers=1, num_heads=2, d_ff=16))
    optimizer = AdamW(model.parameters(), lr=1e-2, compiled=compiled)
    guard = DivergenceGuard(2.0, torch.device("cpu"))
    guard.decide_on_host = on_host  # the GPU's way (the update writes the old values back) runs here too
    step = TrainingStep(model, optimizer, contextlib.nullcontext, 1.0, guard)
    tokens = torch.randint(16, (2, 9))

    def state():
        moments = [optimizer.state[p][key].clone() for p in model.parameters() for key in ("exp_avg", "exp_avg_sq")]
        return [p.detach().clone() for p in model.parameters()] + moments

    first = [p.detach().clone() for p in model.parameters()]
    step(tokens[:, :-1], tokens[:, 1:], 1)
    assert guard.read() is None and not all(torch.equal(p, b) for p, b in zip(model.parameters(), first))
    before = state()
    guard.factor = 0.5  # step 2's loss is now "more than factor x the first": a bad step
    loss, _ = step(tokens[:, :-1], tokens[:, 1:], 2)
    guard.factor = 2.0
    assert all(torch.equal(a, b) for a, b in zip(state(), before))  # weights and both moments
    step(tokens[:, :-1], tokens[:, 1:], 3)  # a good step after a bad one is not kept either: the run has diverged
    assert all(torch.equal(a, b) for a, b in zip(state(), before))
    bad_step, bad_loss, _ = guard.read()
    assert bad_step == 2 and bad_loss == loss.item()


def test_a_rejected_update_stays_rejected_when_its_gradients_are_not_finite():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    optimizer.step()
    before = (param.detach().clone(), optimizer.state[param]["exp_avg"].clone())
    param.grad = torch.tensor([float("nan"), float("inf"), 1.0])
    optimizer.step(keep=torch.tensor(False))
    assert torch.equal(param.detach(), before[0]) and torch.equal(optimizer.state[param]["exp_avg"], before[1])


def test_stop_rules():
    assert budget_reached(10, 10) and not budget_reached(9, 10)
    assert target_reached(1.4, 1.45) and not target_reached(1.45, 1.45) and not target_reached(0.1, None)
    assert divergence_outcome(7, 100) == (7, 600)
    assert checkpoint_due(20, 10, 30) and not checkpoint_due(30, 10, 30) and not checkpoint_due(25, 10, 30)


def test_preemption_flag_catches_sigterm_only_while_installed():
    flag = PreemptionFlag()
    previous = signal.getsignal(signal.SIGTERM)
    with flag.installed():
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested
    assert signal.getsignal(signal.SIGTERM) == previous


OLD_PROGRESS = {  # a checkpoint's progress before the typed record (the trainer's untyped dict)
    "step": 20, "tokens": 5120, "time_s": 1.0, "train_time_s": 0.9, "status": "running",
    "initial_loss": 4.2, "last_train_loss": 3.0, "best_val_loss": 3.1, "target_reached_step": None,
    "diverged_at_step": None, "metrics_lines": ['{"step": 20}'],
}


def test_progress_records_of_older_and_foreign_checkpoints(tmp_path):
    assert Progress.from_dict(OLD_PROGRESS, "c.pt") == Progress(**OLD_PROGRESS)
    for bad in ({**OLD_PROGRESS, "epoch": 1}, {"tokens": 0, "status": "running"}, [1, 2],
                {**OLD_PROGRESS, "status": "paused"}):
        with pytest.raises(ValueError, match=r"c\.pt.*delete it") as error:
            Progress.from_dict(bad, "c.pt")
        assert "\n" not in str(error.value)


def rewrite_progress(checkpoint, progress):
    state = torch.load(checkpoint, weights_only=True)
    state["progress"] = progress
    torch.save(state, checkpoint)


def test_a_checkpoint_of_the_old_format_resumes_and_a_garbled_one_is_refused(tmp_path, capsys):
    config = write_config(tmp_path, training={"max_steps": 40, "checkpoint_interval": 20})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    checkpoint = tmp_path / "ckpt" / "checkpoint.pt"
    progress = load_training_state(checkpoint)["progress"].to_dict()
    del progress["started_at"]  # what an older trainer wrote
    progress.update(step=20, status="running", metrics_lines=progress["metrics_lines"][:4])
    rewrite_progress(checkpoint, progress)
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    assert read_summary(tmp_path / "out")["steps"] == 40 and "resuming" in capsys.readouterr().err

    rewrite_progress(checkpoint, {**progress, "learning_rate": 1.0})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "delete it" in err and err.count("\n") == 1


def test_a_second_trainer_on_the_same_checkpoint_dir_fails_at_once_naming_the_holder(tmp_path):
    config = write_config(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tinylm.training.runlock import run_lock\n"
                               "with run_lock(sys.argv[1]):\n print('locked', flush=True); time.sleep(60)",
                               str(tmp_path / "ckpt")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        second = subprocess.run([sys.executable, "-m", "tinylm", "train", "--config", str(config), "--out-dir",
                                 str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ckpt")],
                                capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2
    assert f"pid {holder.pid} on host {socket.gethostname()}" in second.stderr
    assert second.stderr.count("\n") == 1 and not (tmp_path / "out" / "summary.json").exists()
    with run_lock(tmp_path / "ckpt"):  # released when its holder died
        pass


def test_a_fresh_run_removes_an_earlier_runs_outputs_first(tmp_path):
    config = write_config(tmp_path, training={"max_steps": 240, "checkpoint_interval": 10})
    out = tmp_path / "out"
    out.mkdir()
    for kind in RESULTS:
        (out / FILES[kind]).write_text("an earlier run's")
    process = start_train(config, out, tmp_path / "ckpt")
    signal_after_first_checkpoint(process, tmp_path / "ckpt", signal.SIGKILL)  # a crash mid-run
    process.wait(timeout=60)
    assert "removed an earlier run's" in process.stderr.read()
    assert not any((out / name).exists() for name in ("summary.json", "model.pt", "eval.json"))
    assert "earlier" not in (out / "metrics.jsonl").read_text()


def test_summary_has_the_runs_table_keys_and_provenance(tmp_path, monkeypatch):
    config = write_config(tmp_path, training={"max_steps": 10})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    summary = read_summary(tmp_path / "out")
    for key in ("status", "steps", "tokens", "time_s", "tokens_per_s", "final_val_loss", "best_val_loss", "params"):
        assert summary[key] is not None, key
    assert Summary.read(tmp_path / "out" / "summary.json").provenance.hostname == socket.gethostname()
    provenance = summary["provenance"]
    assert set(provenance) >= PROVENANCE_KEYS
    assert provenance["torch_version"] == torch.__version__ and provenance["hostname"] == socket.gethostname()
    assert provenance["started_at"].endswith("Z") and provenance["cuda_version"] is None
    assert provenance["device_name"] and summary["mfu"] is None  # no peak known for a CPU

    # Outside a git checkout (or without git), the git fields are null, not an error.
    monkeypatch.setattr(provenance_module.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no git")))
    assert train(write_config(tmp_path / "b", training={"max_steps": 10, "peak_flops": 1e12}),
                 tmp_path / "b" / "out", tmp_path / "b" / "ckpt") == 0
    summary = read_summary(tmp_path / "b" / "out")
    assert summary["provenance"]["git_commit"] is None and summary["provenance"]["git_dirty"] is None
    assert summary["peak_flops_per_device"] == 1e12 and 0 < summary["mfu"] < 1


def test_divergence_read_late_reports_the_first_bad_step(tmp_path):
    """Read only every 7th step, a diverged run still ends at (and logs) its first bad step."""
    config = write_config(tmp_path, optimizer={"lr": 50.0, "warmup_steps": 0}, training={"log_interval": 7})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    summary = read_summary(tmp_path / "out")
    assert summary["status"] == "diverged"
    last = read_metrics(tmp_path / "out")[-1]
    assert last["step"] == summary["steps"] == summary["diverged_at_step"]
    assert summary["tokens"] == last["tokens"] == (summary["steps"] - 1) * 8 * 32


def test_prefetched_batches_are_the_seeded_batches_of_their_steps_in_any_order():
    from tinylm.data.tokens import batch_from_starts, rank_slice, train_batch_starts
    from tinylm.training.prefetch import BatchPrefetcher

    tokens = np.arange(10_000, dtype=np.uint16)
    batches = BatchPrefetcher(tokens, 4, 16, 3, 1, 2, torch.device("cpu"))  # rank 1 of 2
    try:
        for step in (0, 1, 2, 7, 3):  # in order (prefetched) and out of order (a resume)
            inputs, targets = batches.batch(step)
            starts = rank_slice(train_batch_starts(len(tokens), 4, 16, 3, step), 1, 2)
            expected = batch_from_starts(tokens, starts, 16, "cpu")
            assert torch.equal(inputs, expected[0]) and torch.equal(targets, expected[1])
    finally:
        batches.close()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("steps", "8", "steps: expected an integer, got '8'"),
    ("time_s", "fast", "time_s: expected a finite number, got 'fast'"),
    ("status", "done", "status: 'done' is not one of completed, early_stopped, diverged"),
    ("provenance", {"hostname": 3}, "provenance.hostname: expected a string, got 3"),
    ("tokens", None, "tokens: expected an integer, got None"),
])
def test_a_malformed_summary_is_refused_naming_the_file_and_the_field(tmp_path, field, value, message):
    path = write_summary(tmp_path / "run")
    data = json.loads(path.read_text())
    data[field] = {**data[field], **value} if isinstance(value, dict) else value
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as error:
        Summary.read(path)
    assert str(error.value) == f"run summary {str(path)!r}: {message}"


def test_a_summary_without_the_fields_later_versions_added_still_reads(tmp_path):
    path = write_summary(tmp_path / "run")
    data = json.loads(path.read_text())
    del data["compile_time_s"], data["divergence_reference_loss"]
    path.write_text(json.dumps(data))
    assert Summary.read(path).compile_time_s == 0.0
    assert SUMMARY.final_val_loss == "final_val_loss"
    with pytest.raises(AttributeError, match="final_vall_loss"):
        _ = SUMMARY.final_vall_loss
