"""The machine a run trains on: its device, precision, compilation, host memory and peak FLOP/s."""
from __future__ import annotations

import contextlib
import ctypes
import platform
import re
from typing import Callable, ContextManager

import torch


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

    A CPU training step frees and reallocates the same activation buffers every step. By default
    glibc hands large buffers back to the OS, and each comes back through a page fault per 4 KiB:
    at the default config's size, on one thread of the development VM, a multiplication into a
    fresh (1024, 2000) float32 buffer took 3.4 ms where a subtraction in place took 0.2 ms.
    Buffers up to 32 MiB (glibc's limit) now stay in the process, whose memory stays at its peak,
    which a training step reaches every step anyway.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def autocast_context(device: torch.device, precision: str) -> Callable[[], ContextManager]:
    """A factory of the context the forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def use_compile(setting: bool | str, device: torch.device) -> bool:
    """`training.compile`: true/false as given; `auto` compiles on CUDA only.

    On the CPU, measured on the development machine (2-core AMD EPYC VM, 1 thread, load average
    1.2, torch 2.13) for the default config's baseline run (700 steps at batch 8, bf16;
    benchmarks/bench_compile.py), the whole `tinylm train` took 66 s eager, 150 s
    compiled (model, loss and AdamW update) with an empty compile cache and 69 s with a warm one:
    even warm, tracing and loading the compiled graphs cost what their faster steps save. Half of
    the default config's runs have a shape or architecture of their own (batch sizes, norm,
    position and FFN variants), so they would compile cold: `auto` leaves the CPU eager.
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


# ---- peak FLOP/s, for model FLOPs utilisation (MFU) ------------------------------------------

# Dense (no structured sparsity) tensor-core peaks from the vendors' datasheets, in FLOP/s, per GPU:
# (bf16, fp32). "fp32" is the TF32 tensor-core peak, the rate fp32 matmuls run at on NVIDIA GPUs
# under torch.set_float32_matmul_precision("high"), which the trainer sets on CUDA. Datasheets
# often print the sparse figure, twice these. Patterns are tried in order; the first match wins.
PEAK_FLOPS: list[tuple[str, str, float, float | None]] = [
    # (pattern on torch.cuda.get_device_name, GPU, bf16, fp32 as TF32)
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 756e12, 378e12),
    (r"\bH100 NVL\b", "H100 NVL", 835e12, 417.5e12),
    (r"\bH100\b", "H100 SXM", 989.4e12, 494.7e12),
    (r"\bH200 NVL\b", "H200 NVL", 835e12, 417.5e12),
    (r"\bH200\b", "H200 SXM", 989.4e12, 494.7e12),
    (r"\bB200\b", "B200", 2250e12, 1125e12),
    (r"\bA100\b", "A100", 312e12, 156e12),
    (r"\bL40S\b", "L40S", 362.05e12, 183.2e12),
    (r"\bL4$", "L4", 121e12, 60e12),
    (r"\bA10$", "A10", 125e12, 62.5e12),
    (r"\bRTX 4090$", "GeForce RTX 4090", 165.2e12, 82.6e12),   # bf16 with fp32 accumulate
    (r"\bRTX 3090$", "GeForce RTX 3090", 71e12, 35.6e12),      # bf16 with fp32 accumulate
    # ROCm: whether fp32 matmuls use the TF32-like path depends on the build, so fp32 stays unknown.
    (r"\bMI300X\b", "Instinct MI300X", 1307.4e12, None),
]


def peak_flops(name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one GPU called `name` (torch.cuda.get_device_name) at `precision`;
    None for a GPU not in the table (or a CPU): no MFU is better than a wrong one."""
    for pattern, _, bf16, fp32 in PEAK_FLOPS:
        if re.search(pattern, name.strip(), flags=re.IGNORECASE):
            return bf16 if precision == "bf16" else fp32
    return None
