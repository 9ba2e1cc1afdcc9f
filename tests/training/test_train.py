"""`tinylm train`, `tinylm evaluate`, `tinylm max-batch` end to end on a tiny synthetic corpus."""
from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import types

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
    trajectory,
    write_config,
)

from tinylm.checkpoint import load_model, load_training_state
from tinylm.cli import main
from tinylm.config import RunConfig
from tinylm.training.max_batch import start_from_prediction
from tinylm.training.trainer import EXIT_PREEMPTED

METRICS_KEYS = {"step", "tokens", "time_s", "lr", "train_loss", "grad_norm", "tokens_per_s", "val_loss",
                "mem_allocated_bytes", "mem_peak_bytes", "mem_total_bytes", "mem_percent"}
SUMMARY_KEYS = {"name", "status", "steps", "tokens", "time_s", "compile_time_s", "final_train_loss", "final_val_loss",
                "best_val_loss", "early_stop_loss", "target_reached_step", "diverged_at_step",
                "divergence_reference_loss",
                "peak_mem_bytes", "mem_total_bytes", "mem_percent", "tokens_per_s", "params", "device"}
# Long enough (about two seconds) that a kill after the first checkpoint lands mid-run.
RESUME_TRAINING = {"max_steps": 240, "log_interval": 1, "eval_interval": 20, "checkpoint_interval": 10}


@pytest.fixture(scope="module", autouse=True)
def single_threaded():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory, single_threaded):
    """An uninterrupted run that the interrupted ones must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root, training=RESUME_TRAINING)
    assert train(config, root / "out", root / "ckpt") == 0
    return root


def model_state(out_dir):
    return torch.load(out_dir / "model.pt", weights_only=True)["model"]


def assert_same_run(out_dir, reference_out):
    assert trajectory(out_dir) == trajectory(reference_out)  # bitwise: floats compared exactly
    ours, theirs = model_state(out_dir), model_state(reference_out)
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    assert read_summary(out_dir)["final_val_loss"] == read_summary(reference_out)["final_val_loss"]


def independent_validation_loss(model, tokens: np.ndarray, context: int) -> float:
    """Per-token mean loss over the whole array, one window at a time, with PyTorch's cross-entropy."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, context):
            window = torch.from_numpy(tokens[start:start + context + 1].astype(np.int64))
            logits = model(window[None, :-1])[0]
            total += torch.nn.functional.cross_entropy(logits.double(), window[1:], reduction="sum").item()
            count += len(window) - 1
    return total / count


def test_metrics_summary_and_outputs(reference):
    out = reference / "out"
    metrics = read_metrics(out)
    assert all(set(record) == METRICS_KEYS for record in metrics)
    assert [r["step"] for r in metrics] == list(range(1, 241))
    assert [r["step"] for r in metrics if r["val_loss"] is not None] == list(range(20, 241, 20))
    assert all(r["tokens"] == r["step"] * 8 * 32 for r in metrics)
    assert metrics[0]["lr"] == pytest.approx(3e-3 / 5)  # warm-up: step 1 of 5
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 1.0  # it learned the pattern

    summary = read_summary(out)
    assert set(summary) >= SUMMARY_KEYS
    assert summary["status"] == "completed" and summary["steps"] == 240 and summary["tokens"] == 240 * 256
    assert summary["final_train_loss"] == metrics[-1]["train_loss"]
    assert summary["best_val_loss"] <= min(r["val_loss"] for r in metrics if r["val_loss"] is not None)
    assert summary["diverged_at_step"] is None and summary["target_reached_step"] is None

    config = RunConfig.load(reference / "tiny.json")
    assert RunConfig.load(out / "config.json") == config
    model, saved_config = load_model(out / "model.pt")
    assert saved_config == config
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    valid = np.load(config.data.valid_tokens)
    assert summary["final_val_tokens"] == len(valid) - 1
    assert summary["final_val_loss"] == pytest.approx(independent_validation_loss(model, valid, 32), rel=1e-5)


def test_evaluate_command_matches_the_final_validation_loss(reference, tmp_path):
    config = RunConfig.load(reference / "tiny.json")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(reference / "out" / "model.pt"),
                 "--tokens", config.data.valid_tokens, "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["loss"] == pytest.approx(read_summary(reference / "out")["final_val_loss"], rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert main(["evaluate", "--checkpoint", str(reference / "out" / "model.pt"), "--tokens",
                 config.data.valid_tokens, "--out", str(out), "--max-tokens", "50"]) == 0
    assert json.loads(out.read_text())["tokens"] == 50


@pytest.mark.slow
def test_resume_after_sigkill_equals_the_uninterrupted_run(reference, tmp_path):
    config = shutil.copy(reference / "tiny.json", tmp_path / "tiny.json")
    process = start_train(config, tmp_path / "out", tmp_path / "ckpt")
    signal_after_first_checkpoint(process, tmp_path / "ckpt", signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not (tmp_path / "out" / "summary.json").exists()
    assert load_training_state(tmp_path / "ckpt" / "checkpoint.pt")["progress"].step < 240

    shutil.rmtree(tmp_path / "out")  # as Snakemake does with a failed job's outputs
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    assert_same_run(tmp_path / "out", reference / "out")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_with_the_preempted_status(reference, tmp_path):
    config = shutil.copy(reference / "tiny.json", tmp_path / "tiny.json")
    process = start_train(config, tmp_path / "out", tmp_path / "ckpt")
    signal_after_first_checkpoint(process, tmp_path / "ckpt", signal.SIGTERM)
    assert process.wait(timeout=60) == EXIT_PREEMPTED == 143
    assert "SIGTERM" in process.stderr.read()
    saved_step = load_training_state(tmp_path / "ckpt" / "checkpoint.pt")["progress"].step
    assert read_metrics(tmp_path / "out")[-1]["step"] == saved_step < 240
    assert not (tmp_path / "out" / "summary.json").exists()

    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    assert_same_run(tmp_path / "out", reference / "out")


def test_a_learning_rate_that_blows_up_ends_as_a_diverged_run(tmp_path):
    config = write_config(tmp_path, optimizer={"lr": 50.0, "warmup_steps": 0}, training={"log_interval": 1})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    summary = read_summary(tmp_path / "out")
    assert summary["status"] == "diverged"
    assert summary["final_val_loss"] is None
    metrics = read_metrics(tmp_path / "out")
    assert metrics[-1]["step"] == summary["diverged_at_step"] == summary["steps"] == len(metrics) < 40
    last_loss = metrics[-1]["train_loss"]
    assert last_loss is None or last_loss > 2 * metrics[0]["train_loss"]
    weights, _ = load_model(tmp_path / "out" / "model.pt")  # the weights before the bad update
    assert all(torch.isfinite(p).all() for p in weights.parameters())


def test_early_stop_at_the_target_loss_and_a_rerun_changes_nothing(tmp_path):
    config = write_config(tmp_path, training={"max_steps": 300, "eval_interval": 5, "early_stop_loss": 3.0})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    summary = read_summary(tmp_path / "out")
    evaluated = [r for r in read_metrics(tmp_path / "out") if r["val_loss"] is not None]
    assert summary["status"] == "early_stopped"
    assert evaluated[-1]["val_loss"] < 3.0 <= min(r["val_loss"] for r in evaluated[:-1])
    assert summary["target_reached_step"] == summary["steps"] == evaluated[-1]["step"] < 300

    metrics_before = (tmp_path / "out" / "metrics.jsonl").read_text()
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0  # finished: nothing more to train
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == metrics_before
    rerun = read_summary(tmp_path / "out")
    assert (rerun["status"], rerun["steps"], rerun["final_val_loss"]) == (
        "early_stopped", summary["steps"], summary["final_val_loss"])


def run_expecting_error(capsys, config, tmp_path) -> str:
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 2
    return capsys.readouterr().err


def test_bad_inputs_give_one_line_errors_naming_the_culprit(tmp_path, capsys):
    config = write_config(tmp_path, data={"valid_tokens": str(tmp_path / "nowhere.npy")})
    assert "data.valid_tokens" in run_expecting_error(capsys, config, tmp_path)

    config = write_config(tmp_path, training={"batch_sise": 8})
    assert "training.batch_sise: unknown config key" in run_expecting_error(capsys, config, tmp_path)

    config = write_config(tmp_path, model={"vocab_size": 40})
    err = run_expecting_error(capsys, config, tmp_path)
    assert "data.train_tokens" in err and "token id 63" in err and "vocab_size is 40" in err

    config = write_config(tmp_path, model={"vocab_size": 40}, training={"devices": 2})  # before any launch
    assert "vocab_size is 40" in run_expecting_error(capsys, config, tmp_path)

    config = write_config(tmp_path, model={"context_length": 5000})
    assert "model.context_length" in run_expecting_error(capsys, config, tmp_path)

    err = run_expecting_error(capsys, tmp_path / "absent.json", tmp_path)
    assert "absent.json" in err and err.count("\n") == 1


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path, capsys):
    config = write_config(tmp_path, training={"max_steps": 20, "checkpoint_interval": 10})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    changed = write_config(tmp_path, optimizer={"lr": 1e-3}, training={"max_steps": 20})
    err = run_expecting_error(capsys, changed, tmp_path)
    assert "optimizer.lr" in err and "checkpoint.pt" in err


@pytest.mark.slow
def test_a_compiled_run_counts_compilation_apart_and_compiles_each_graph_once(tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    config = write_config(tmp_path, training={"max_steps": 12, "log_interval": 1, "eval_interval": 6,
                                              "compile": True, "final_eval_tokens": 1000})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    summary, metrics = read_summary(tmp_path / "out"), read_metrics(tmp_path / "out")
    assert summary["compiled"] and summary["compile_time_s"] > 0
    # Throughput counts the steps that trained, over their time: not the first step, which compiled.
    trained_tokens = summary["tokens"] - summary["tokens"] // summary["steps"]
    assert summary["tokens_per_s"] * summary["train_time_s"] == pytest.approx(trained_tokens, rel=0.05)
    assert summary["time_s"] >= summary["compile_time_s"] + summary["train_time_s"] - 0.01
    assert metrics[0]["tokens_per_s"] is None and all(m["tokens_per_s"] > 0 for m in metrics[1:])
    # The loss (forward and backward), the AdamW update and evaluation compile once each: the final
    # evaluation's short last window and partial batch are padded to the same shape.
    assert counters["stats"]["unique_graphs"] == 3 and counters["frames"]["total"] == 3


def max_batch_result(tmp_path, budget_mb: int, start: int | None) -> dict:
    config = write_config(tmp_path)
    out = tmp_path / f"max_batch-{start}.json"
    assert main(["max-batch", "--config", str(config), "--out", str(out), "--cpu-memory-budget-mb", str(budget_mb),
                 "--max-batch", "1024", *(["--start-batch", str(start)] if start else [])]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("start", [1, 256, None], ids=["doubling from 1", "halving from 256", "from the prediction"])
def test_max_batch_on_cpu_stops_at_the_memory_budget(tmp_path, start):
    budget_mb = 12
    result = max_batch_result(tmp_path, budget_mb, start)
    tried = result["tried"]  # in batch order, whichever way the search went
    batches = [t["batch"] for t in tried]
    assert batches == [batches[0] * 2 ** i for i in range(len(tried))] and (start is None or start in batches)
    fitting = [t for t in tried if t["fits"]]
    assert fitting and fitting == tried[:len(fitting)] and len(fitting) < len(tried)  # fits below, not above
    assert min(t["peak_bytes"] for t in tried if not t["fits"]) > budget_mb * 2**20 >= max(
        t["peak_bytes"] for t in fitting)
    assert result["largest_batch"] == fitting[-1]["batch"] >= 2
    assert result["device"] == "cpu" and result["total_memory"] > 0 and result["compiled"] is False
    if start is None:  # the prediction picks the start: few tries
        config = RunConfig.load(write_config(tmp_path))
        assert batches[0] == start_from_prediction(config, "cpu", budget_mb * 2**20, 1024) and len(tried) <= 3


def test_bf16_autocast_and_fused_attention_train_like_the_reference(tmp_path):
    runs = {"reference": {}, "fast": {"precision": "bf16", "attention": "fused"}}
    for name, settings in runs.items():
        config = write_config(tmp_path / name, training={"max_steps": 10, "log_interval": 1, **settings})
        assert train(config, tmp_path / name / "out", tmp_path / name / "ckpt") == 0
        assert read_summary(tmp_path / name / "out")["status"] == "completed"
    reference, fast = (read_metrics(tmp_path / name / "out") for name in runs)
    # Same initial weights and batch: the first loss differs only by bf16 rounding.
    assert fast[0]["train_loss"] == pytest.approx(reference[0]["train_loss"], rel=2e-2)
    assert fast[-1]["train_loss"] == pytest.approx(reference[-1]["train_loss"], rel=0.1)


def test_weights_and_biases_gets_every_metrics_line_when_enabled(tmp_path, monkeypatch):
    calls = []

    class FakeRun:
        def log(self, data, step):
            calls.append(("log", step, data))

        def finish(self):
            calls.append(("finish",))

    fake_wandb = types.ModuleType("wandb")
    fake_wandb.init = lambda **kwargs: calls.append(("init", kwargs)) or FakeRun()
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    config = write_config(tmp_path, training={"max_steps": 10, "wandb": True})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0

    assert calls[0][0] == "init" and calls[0][1]["name"] == "tiny"
    assert calls[0][1]["config"] == RunConfig.load(config).to_dict()
    logged = [call for call in calls if call[0] == "log"]
    metrics = read_metrics(tmp_path / "out")
    assert [step for _, step, _ in logged] == [r["step"] for r in metrics]
    assert logged[-1][2]["train_loss"] == metrics[-1]["train_loss"]
    assert calls[-1] == ("finish",)
