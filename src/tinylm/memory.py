"""Memory measurement, and `tinylm max-batch`: the largest batch one training step fits in.

On a GPU, memory is what PyTorch's allocator holds on the device. On CPU there is no allocator to
ask, so memory is the process's resident set size (RSS); its peak comes from the kernel's
high-water mark, which Linux lets a process reset (/proc/self/clear_refs) to measure one step.
torch is imported only inside the functions that need it, so `peak_rss_bytes` is cheap to import.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import math
import resource
import sys
from typing import TYPE_CHECKING

from tinylm.config import ModelConfig, RunConfig
from tinylm.fileio import write_json_atomic

if TYPE_CHECKING:
    import torch


def _linux_peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Highest resident set size of this process (since start, or since `reset_peak_rss`)."""
    peak = _linux_peak_rss()
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, Linux KiB


def reset_peak_rss() -> bool:
    """Restart the RSS high-water mark at the current RSS (Linux only); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def memory_stats(device: torch.device) -> tuple[int, int, int]:
    """(allocated, peak, total) bytes: the accelerator's, or on CPU the process RSS and machine RAM."""
    import torch

    if device.type == "cuda":
        return (torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device),
                torch.cuda.get_device_properties(device).total_memory)
    import psutil  # CPU and MPS only: a bare GPU machine may lack it

    total = psutil.virtual_memory().total
    if device.type == "mps":
        allocated = torch.mps.current_allocated_memory()
        return allocated, max(allocated, torch.mps.driver_allocated_memory()), total
    return psutil.Process().memory_info().rss, peak_rss_bytes(), total


def memory_percent(peak: int, total: int) -> float:
    """Peak memory as a percentage of the device's (or machine's) total."""
    return round(100.0 * peak / total, 3)


def release_freed_memory(device: torch.device) -> None:
    """Hand memory that tensors freed back to the system (the CUDA cache; glibc's heap on the CPU),
    so that the next, smaller, measurement does not start from the larger one's footprint."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "cpu":
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def reset_peak_memory(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "cpu":
        reset_peak_rss()


# ---- tinylm max-batch -----------------------------------------------------------------------

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

    from tinylm.device import DivergenceGuard, TrainingStep, autocast_context, resolve_device, synchronize, use_compile
    from tinylm.nn import build_model
    from tinylm.optim import AdamW

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

    # The first step of a process loads kernels and library buffers (~100 MB on CPU); a throwaway
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
    from tinylm.memory_model import largest_fitting_batch

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
