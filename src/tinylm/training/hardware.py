"""The machine a run trains on: its device, precision, compilation, host memory and peak FLOP/s."""
from __future__ import annotations

import contextlib
import ctypes
import platform
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch

from tinylm.training.peak_flops import peak_flops

if TYPE_CHECKING:
    from tinylm.config import TrainingConfig


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda, then mps, then cpu; each process of a multi-GPU run takes its own GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("training.device: cuda requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("training.device: mps requested but MPS is not available")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait until the device has run everything queued (a no-op on the CPU, which runs it in order)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def keep_freed_host_memory() -> bool:
    """Ask the C allocator (glibc malloc) to keep freed memory for reuse, as PyTorch's CUDA allocator
    does on the GPU; returns whether it agreed (False where there is no glibc).

    A CPU training step frees and reallocates the same activation buffers every step. glibc may hand
    large buffers back to the OS, and each then comes back through a page fault per 4 KiB page
    (tests/training/test_trainer_parts.py counts them; benchmarks/results/cpu_kernels.md times a step-sized
    product into a fresh buffer under both settings). Buffers up to 32 MiB (glibc's limit) now stay
    in the process, whose memory stays at its peak, which a training step reaches every step anyway.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def autocast_context(device: torch.device, precision: str) -> Callable[[], AbstractContextManager]:
    """A factory of the context the forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def use_compile(setting: bool | str, device: torch.device) -> bool:
    """`training.compile`: true/false as given; `auto` compiles on CUDA only.

    On the CPU a whole default baseline run compiled takes longer than eager from an empty compile
    cache, and about as long from a warm one (benchmarks/results/compile_cpu.md): tracing and
    loading the graphs cost what their faster steps save. Half of the default config's runs have a
    shape or architecture of their own (batch sizes, norm, position and FFN variants), so they would
    compile cold: `auto` leaves the CPU eager.
    """
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def device_name(device: torch.device) -> str:
    """The accelerator's marketing name, or the CPU model (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.processor() or platform.machine()})"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def run_peak_flops(device: torch.device, training: TrainingConfig) -> float | None:
    """One device's peak FLOP/s for a run (its `TrainingConfig`): `training.peak_flops` where set,
    else the table's for a CUDA GPU; None for a CPU or an unknown GPU."""
    if training.peak_flops is not None:
        return training.peak_flops
    return peak_flops(device_name(device), training.precision) if device.type == "cuda" else None
