"""Memory measurement, and `tinylm max-batch`: the largest batch one training step fits in.

On a GPU, memory is what PyTorch's allocator holds on the device. On CPU there is no allocator to
ask, so memory is the process's resident set size (RSS); its peak comes from the kernel's
high-water mark, which Linux lets a process reset (/proc/self/clear_refs) to measure one step.
torch is imported only inside the functions that need it, so `peak_rss_bytes` is cheap to import.
"""
from __future__ import annotations

import argparse
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


def reset_peak_memory(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "cpu":
        reset_peak_rss()


# ---- tinylm max-batch -----------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config JSON (model shape, device, precision)")
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--memory-budget-mb", type=float, default=None,
                        help="largest peak memory a step may use (required on CPU; on a GPU the device's memory)")
    parser.add_argument("--max-batch", type=int, default=4096, help="stop growing the batch here")


def probe_max_batch(config: RunConfig, memory_budget_bytes: int | None, max_batch: int) -> dict:
    """Double the batch from 1 until a training step no longer fits; return what was tried."""
    import torch

    from tinylm.nn import build_model
    from tinylm.optim import AdamW
    from tinylm.device import autocast_context, resolve_device, training_step

    device = resolve_device(config.training.device)
    if device.type != "cuda" and memory_budget_bytes is None:
        raise ValueError("--memory-budget-mb is required on a device without an out-of-memory signal "
                         f"({device.type})")
    precision = autocast_context(device, config.training.precision)

    def one_step(model_config: ModelConfig, batch: int) -> None:
        model = build_model(model_config, attention=config.training.attention, device=device)
        optimizer = AdamW.from_config(model.parameters(), config.optimizer)
        inputs = torch.randint(model_config.vocab_size, (batch, model_config.context_length + 1), device=device)
        training_step(model, optimizer, inputs[:, :-1], inputs[:, 1:], precision, config.optimizer.grad_clip)

    # The first step of a process loads kernels and library buffers (~100 MB on CPU); a throwaway
    # model pays for that, so the baseline below leaves only what the real model's step needs.
    one_step(ModelConfig(vocab_size=16, context_length=8, d_model=8, num_layers=1, num_heads=2, d_ff=16), 1)
    gc.collect()
    baseline, _, total = memory_stats(device)
    tried, largest, batch = [], 0, 1
    while batch <= max_batch:
        gc.collect()
        reset_peak_memory(device)
        try:
            one_step(config.model, batch)  # model, gradients, optimizer state and activations
            peak = memory_stats(device)[1] - (baseline if device.type == "cpu" else 0)
            fits = memory_budget_bytes is None or peak <= memory_budget_bytes
        except torch.OutOfMemoryError:
            peak, fits = None, False
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        tried.append({"batch": batch, "peak_bytes": peak, "fits": fits})
        print(f"batch {batch:>6}: peak {peak / 2**20 if peak is not None else float('nan'):10.1f} MiB  "
              f"{'fits' if fits else 'does not fit'}", flush=True)
        if not fits:
            break
        largest, batch = batch, batch * 2
    measure = ("peak RSS above the process's baseline (model, gradients, optimizer state, activations)"
               if device.type == "cpu" else f"peak {device.type} memory allocated by PyTorch")
    return {"largest_batch": largest, "device": str(device), "total_memory": total, "peak_measure": measure,
            "memory_budget_bytes": memory_budget_bytes, "context_length": config.model.context_length,
            "tried": tried}


def check_arguments(args: argparse.Namespace) -> None:
    """The command's own numbers, before the run config is read or any model is built."""
    if args.max_batch < 1:
        raise ValueError(f"--max-batch: must be a positive integer, got {args.max_batch}")
    budget = args.memory_budget_mb
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"--memory-budget-mb: must be a finite number > 0, got {budget:g}")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    config = RunConfig.load(args.config)
    budget = None if args.memory_budget_mb is None else int(args.memory_budget_mb * 2**20)
    result = probe_max_batch(config, budget, args.max_batch)
    write_json_atomic(args.out, result)
    print(f"largest batch that fits: {result['largest_batch']} (written to {args.out})")
    return 0
