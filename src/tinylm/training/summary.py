"""summary.json: a finished run's results, and the provenance of the code and machine that made them."""
from __future__ import annotations

import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import tinylm
from tinylm.config import RunConfig
from tinylm.training.hardware import device_name, peak_flops
from tinylm.files import write_json_atomic
from tinylm.training.memory import memory_percent, memory_stats
from tinylm.training.metrics import finite_or_none
from tinylm.nn import model_flops_utilization, training_flops_per_token
from tinylm.training.progress import Progress


def peak_flops_of(device: torch.device, config: RunConfig) -> float | None:
    """One device's peak FLOP/s for this run: `training.peak_flops` if set, else the GPU table's."""
    if config.training.peak_flops is not None:
        return config.training.peak_flops
    if device.type != "cuda":
        return None
    return peak_flops(device_name(device), config.training.precision)


def write_summary(path: Path, config: RunConfig, progress: Progress, device: torch.device, processes: int,
                  compiled: bool, final_val_loss: float | None, final_val_tokens: int, params: int) -> dict:
    """Write summary.json (atomically) and return it. Keys are documented in config/README.md."""
    p = progress
    _, peak_mem, total_mem = memory_stats(device)
    # Throughput of the steps that trained, not of those that compiled (their time is compile_time_s).
    trained_tokens = p.tokens - p.compile_steps * config.tokens_per_step
    tokens_per_s = trained_tokens / p.train_time_s if p.train_time_s > 0 and trained_tokens > 0 else None
    peak = peak_flops_of(device, config)
    mfu = None
    if peak is not None and tokens_per_s is not None:
        mfu = model_flops_utilization(tokens_per_s / processes, config.model, peak)
    summary = {
        "name": config.name, "status": p.status, "steps": p.step, "tokens": p.tokens,
        "time_s": round(p.time_s, 3), "train_time_s": round(p.train_time_s, 3),
        "compile_time_s": round(p.compile_time_s, 3),
        "final_train_loss": finite_or_none(p.last_train_loss),
        "final_val_loss": final_val_loss, "final_val_tokens": final_val_tokens,
        "best_val_loss": p.best_val_loss, "early_stop_loss": config.training.early_stop_loss,
        "target_reached_step": p.target_reached_step, "diverged_at_step": p.diverged_at_step,
        "divergence_reference_loss": finite_or_none(p.initial_loss),
        "peak_mem_bytes": peak_mem, "mem_total_bytes": total_mem,
        "mem_percent": memory_percent(peak_mem, total_mem),
        "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s is not None else None,
        "params": params, "device": str(device), "processes": processes, "compiled": compiled,
        "train_flops_per_token": training_flops_per_token(config.model),
        "peak_flops_per_device": peak, "mfu": mfu,
        "provenance": provenance(device, p.started_at),
    }
    write_json_atomic(path, summary)
    return summary


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second (e.g. 2026-12-01T21:48:09Z)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(*args: str) -> str | None:
    """Output of a git command in the package's source tree; None outside a checkout or without git."""
    try:
        result = subprocess.run(["git", *args], cwd=Path(tinylm.__file__).resolve().parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def provenance(device: torch.device, started_at: str | None) -> dict[str, Any]:
    """Which code, libraries and machine produced a run; unknowable fields (no git checkout) are None."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "git_commit": commit, "git_dirty": None if status is None else bool(status),
        "tinylm_version": tinylm.__version__, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "device_name": device_name(device),
        "cuda_version": torch.version.cuda if device.type == "cuda" else None,
        "hostname": socket.gethostname(), "platform": platform.platform(), "started_at": started_at,
        "command": " ".join(sys.argv),
    }
