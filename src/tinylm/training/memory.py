"""Memory measurement: what a training step holds on its device, at peak and now.

On a GPU, memory is what PyTorch's allocator holds on the device. On CPU there is no allocator to
ask, so memory is the process's resident set size (RSS); its peak comes from the kernel's
high-water mark, which Linux lets a process reset (/proc/self/clear_refs) to measure one step.
torch is imported only inside the functions that need it, so `peak_rss_bytes` is cheap to import.
"""
from __future__ import annotations

import contextlib
import ctypes
import resource
import sys
from typing import TYPE_CHECKING

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
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
            ctypes.CDLL(None).malloc_trim(0)


def reset_peak_memory(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "cpu":
        reset_peak_rss()
