"""On a CUDA GPU: the training step queues without host syncs, batches arrive pinned and early, and a
whole run trains, measures MFU and records the GPU. Skipped (with the reason) without CUDA.

Run on a GPU machine with `pytest -m cuda tests/training/test_cuda.py` (benchmarks/gpu_check.sh does).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from tiny_run import read_metrics, read_summary, train, write_config

from tinylm.config import ModelConfig, RunConfig
from tinylm.nn import build_model, model_flops_utilization
from tinylm.optim import AdamW
from tinylm.training.divergence import DivergenceGuard
from tinylm.training.hardware import autocast_context, device_name
from tinylm.training.peak_flops import peak_flops
from tinylm.training.prefetch import BatchPrefetcher
from tinylm.training.step import TrainingStep

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
MODEL = ModelConfig(vocab_size=512, context_length=64, d_model=128, num_layers=2, num_heads=4, d_ff=344)


@contextlib.contextmanager
def no_host_sync():
    """Any operation that makes the host wait for the GPU raises inside this block."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_training_step_with_its_guard_and_next_batch_never_waits_for_the_gpu(compiled):
    device = torch.device("cuda", 0)
    torch.manual_seed(0)
    model = build_model(MODEL, attention="fused", device=device)
    optimizer = AdamW(model.parameters(), lr=1e-3, compiled=compiled)
    guard = DivergenceGuard(2.0, device)
    tokens = np.random.default_rng(0).integers(0, MODEL.vocab_size, 50_000).astype(np.uint16)
    batches = BatchPrefetcher(tokens, 8, MODEL.context_length, 0, 0, 1, device)
    step = TrainingStep(model, optimizer, autocast_context(device, "bf16"), 1.0, guard, compiled=compiled)
    try:
        for number in range(1, 4):  # warm-up: compilation and first allocations may synchronise
            step(*batches.batch(number - 1), number)
        with no_host_sync():
            for number in range(4, 9):
                inputs, targets = batches.batch(number - 1)
                loss, grad_norm = step(inputs, targets, number)
    finally:
        batches.close()
    assert inputs.is_cuda and loss.is_cuda and grad_norm.is_cuda
    assert guard.read() is None and torch.isfinite(loss)


def test_prefetched_batches_are_the_seeded_batches_of_their_steps():
    from tinylm.data.tokens import batch_from_starts, train_batch_starts

    device = torch.device("cuda", 0)
    tokens = np.arange(10_000, dtype=np.uint16)
    batches = BatchPrefetcher(tokens, 4, 16, 3, 0, 1, device)
    try:
        for step in (0, 1, 2, 7):
            inputs, targets = batches.batch(step)
            expected = batch_from_starts(tokens, train_batch_starts(len(tokens), 4, 16, 3, step), 16, device)
            assert torch.equal(inputs, expected[0]) and torch.equal(targets, expected[1])
    finally:
        batches.close()


@pytest.mark.parametrize("settings", [{"precision": "fp32", "compile": False},
                                      {"precision": "bf16", "compile": True, "attention": "fused"}],
                         ids=["fp32", "bf16-compiled"])
def test_a_run_on_the_gpu_trains_and_records_the_gpu(tmp_path, settings):
    config = write_config(tmp_path, training={"max_steps": 60, "device": "cuda", "log_interval": 1, **settings})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    summary = read_summary(tmp_path / "out")
    metrics = read_metrics(tmp_path / "out")
    assert summary["status"] == "completed" and summary["device"] == "cuda:0"
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 1.0
    assert summary["provenance"]["device_name"] == torch.cuda.get_device_name(0)
    assert summary["provenance"]["cuda_version"] == torch.version.cuda
    assert summary["compiled"] is settings["compile"]
    assert (summary["compile_time_s"] > 0) is settings["compile"]
    peak = peak_flops(device_name(torch.device("cuda", 0)), settings["precision"])
    if peak is None:
        assert summary["mfu"] is None  # an unknown GPU gets no MFU rather than a wrong one
    else:  # the model FLOPs of the tokens trained per second, over the GPU's peak: stored unrounded
        model = RunConfig.load(config).model
        assert summary["mfu"] == pytest.approx(model_flops_utilization(summary["tokens_per_s"], model, peak), rel=1e-3)
        assert 0 < summary["mfu"] < 1


def test_a_diverging_run_on_the_gpu_keeps_the_weights_before_the_bad_update(tmp_path):
    config = write_config(tmp_path, optimizer={"lr": 50.0, "warmup_steps": 0},
                          training={"device": "cuda", "log_interval": 7})
    assert train(config, tmp_path / "out", tmp_path / "ckpt") == 0
    summary = read_summary(tmp_path / "out")
    assert summary["status"] == "diverged" and summary["steps"] == summary["diverged_at_step"]
    assert read_metrics(tmp_path / "out")[-1]["step"] == summary["diverged_at_step"]
