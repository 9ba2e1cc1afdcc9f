"""`tinylm max-batch`: the largest batch whose training step, as the run would train it, fits.

    tinylm max-batch --config RUN.json --out max_batch.json [--cpu-memory-budget-mb 1024]

On a CUDA GPU the limit is the device's memory (an out-of-memory error); on the CPU, which has no
such signal, a budget for the process's peak memory above its baseline.
"""
from __future__ import annotations

import argparse
import gc
import math

from tinylm.config import ModelConfig, RunConfig
from tinylm.files import write_json_atomic
from tinylm.training.memory import memory_stats, release_freed_memory, reset_peak_memory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="run config JSON: the model, and the step as it trains (device, precision, "
                             "attention, compile, divergence guard, optimizer)")
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--cpu-memory-budget-mb", type=float, default=None,
                        help="largest peak memory a step may use where no out-of-memory error marks the limit "
                             "(the CPU; required there); a CUDA GPU's limit is its memory, and this is ignored")
    parser.add_argument("--max-batch", type=int, default=4096, help="stop growing the batch here")
    parser.add_argument("--start-batch", type=int, default=None,
                        help="the first batch tried: the search doubles from there while steps fit, and halves "
                             "while they do not (default: a power of two at half the largest batch the memory "
                             "prediction fits, so that few batch sizes are built, and compiled)")


def probe_max_batch(config: RunConfig, cpu_budget_bytes: int | None, max_batch: int,
                    start_batch: int | None = None) -> dict:
    """The largest batch (a power of two times the start) whose training step fits, and every batch
    tried. Each try builds a fresh model and runs two steps exactly as the trainer would
    (`TrainingStep`: the run's precision, attention, compilation, divergence guard and AdamW), the
    second with the optimizer's state already allocated. Without `start_batch`, the search starts
    from the memory prediction (`start_from_prediction`)."""
    import torch

    from tinylm.nn import build_model
    from tinylm.optim import AdamW
    from tinylm.training.divergence import DivergenceGuard
    from tinylm.training.hardware import autocast_context, resolve_device, synchronize, use_compile
    from tinylm.training.step import TrainingStep

    t = config.training
    device = resolve_device(t.device)
    budget = None if device.type == "cuda" else cpu_budget_bytes
    if budget is None and device.type != "cuda":
        raise ValueError("--cpu-memory-budget-mb is required on a device without an out-of-memory signal "
                         f"({device.type})")
    compiled = use_compile(t.compile, device)
    precision = autocast_context(device, t.precision)

    def two_steps(model_config: ModelConfig, batch: int, compile_step: bool) -> None:
        torch._dynamo.reset()  # a fresh graph per batch size: no recompile limit, no stale cache
        model = build_model(model_config, attention=t.attention, device=device)
        optimizer = AdamW.from_config(model.parameters(), config.optimizer, compiled=compile_step)
        step = TrainingStep(model, optimizer, precision, config.optimizer.grad_clip,
                            DivergenceGuard(t.divergence_factor, device), compiled=compile_step)
        tokens = torch.randint(model_config.vocab_size, (batch, model_config.context_length + 1), device=device)
        for number in (1, 2):
            step(tokens[:, :-1], tokens[:, 1:], number)
        synchronize(device)

    # The first step of a process loads kernels and library buffers; a throwaway
    # model pays for that, so the baseline below leaves only what the real model's step needs.
    two_steps(ModelConfig(vocab_size=16, context_length=8, d_model=8, num_layers=1, num_heads=2, d_ff=16), 1, False)
    gc.collect()
    baseline, _, total = memory_stats(device)

    def measure(batch: int) -> dict:
        gc.collect()
        reset_peak_memory(device)
        try:
            two_steps(config.model, batch, compiled)  # model, gradients, optimizer state and activations
            peak = memory_stats(device)[1] - (baseline if device.type == "cpu" else 0)
            fits = budget is None or peak <= budget
        except torch.OutOfMemoryError:
            peak, fits = None, False
        finally:
            gc.collect()
            release_freed_memory(device)
        print(f"batch {batch:>6}: peak {peak / 2**20 if peak is not None else float('nan'):10.1f} MiB  "
              f"{'fits' if fits else 'does not fit'}", flush=True)
        return {"batch": batch, "peak_bytes": peak, "fits": fits}

    if start_batch is None:
        start_batch = start_from_prediction(config, device.type, budget or total, max_batch)
    tried = [measure(min(start_batch, max_batch))]
    direction = 2 if tried[0]["fits"] else 0.5
    while True:
        batch = int(tried[-1]["batch"] * direction)
        if batch < 1 or batch > max_batch or tried[-1]["fits"] != tried[0]["fits"]:
            break
        tried.append(measure(batch))
    largest = max((t["batch"] for t in tried if t["fits"]), default=0)
    measure_text = ("peak RSS above the process's baseline (model, gradients, optimizer state, activations)"
                    if device.type == "cpu" else f"peak {device.type} memory allocated by PyTorch")
    return {"largest_batch": largest, "device": str(device), "total_memory": total, "peak_measure": measure_text,
            "memory_budget_bytes": budget, "compiled": compiled, "context_length": config.model.context_length,
            "tried": sorted(tried, key=lambda t: t["batch"])}


def start_from_prediction(config: RunConfig, device_type: str, memory_bytes: int, max_batch: int) -> int:
    """A power of two at half the largest batch whose predicted peak fits (at least 1): the prediction
    counts tensors only, so the measured limit is near it, and rarely below half of it."""
    from tinylm.training.memory_model import largest_fitting_batch

    largest = largest_fitting_batch(config, device_type, memory_bytes, limit=max_batch)
    return 1 << max((largest // 2).bit_length() - 1, 0)


def check_arguments(args: argparse.Namespace) -> None:
    """The command's own numbers, before the run config is read or any model is built."""
    for option in ("max_batch", "start_batch"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')}: must be a positive integer, got {getattr(args, option)}")
    budget = args.cpu_memory_budget_mb
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"--cpu-memory-budget-mb: must be a finite number > 0, got {budget:g}")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    config = RunConfig.load(args.config)
    budget = None if args.cpu_memory_budget_mb is None else int(args.cpu_memory_budget_mb * 2**20)
    result = probe_max_batch(config, budget, args.max_batch, args.start_batch)
    write_json_atomic(args.out, result)
    print(f"largest batch that fits: {result['largest_batch']} (written to {args.out})")
    return 0
