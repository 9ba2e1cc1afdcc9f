"""summary.json: a finished run's results, and the provenance of the code and machine that made them.

`Summary` owns the file: the trainer builds one (`summarize`) and writes it, and everything else
(generation, export, the report, the runs table) reads it with `Summary.read`, which checks every
field and names the file and the field when one is wrong. Code that needs a field's name as text
(a table column) takes it from `SUMMARY`, so a misspelt name fails where it is written.

torch is imported only by the functions that build a summary, so reading one stays cheap.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, Union, get_args, get_origin, get_type_hints

from tinylm.files import file_error, read_json, write_json_atomic
from tinylm.training.metrics import finite_or_none

if TYPE_CHECKING:
    import torch

    from tinylm.config import RunConfig
    from tinylm.training.progress import Progress

STATUSES = ("completed", "early_stopped", "diverged")
T = TypeVar("T")


@dataclass(frozen=True)
class Provenance:
    """Which code, libraries and machine produced a run; what cannot be known (no git checkout) is None."""

    git_commit: str | None
    git_dirty: bool | None
    lock: str | None            # the lock file, its sha256 and whether the packages were as locked
    tinylm_version: str
    torch_version: str
    python_version: str
    device_name: str
    cuda_version: str | None
    hostname: str
    platform: str
    started_at: str | None     # ISO 8601 UTC start of the run's first session
    command: str


@dataclass(frozen=True)
class Summary:
    """A finished run. Losses are nats per token; a loss that was not finite is None."""

    name: str
    status: str                          # completed | early_stopped | diverged
    steps: int                           # optimizer steps done (a diverged run: its first bad step)
    tokens: int                          # training tokens of the updates kept
    time_s: float                        # wall time of every session
    train_time_s: float                  # of which training steps (no evaluation, checkpoints, compilation)
    final_train_loss: float | None
    final_val_loss: float | None         # on the validation array (training.final_eval_tokens of it)
    final_val_tokens: int
    best_val_loss: float | None
    early_stop_loss: float | None        # the target, when the run had one
    target_reached_step: int | None
    diverged_at_step: int | None
    peak_mem_bytes: int                  # the device's (on the CPU, the process's) peak memory
    mem_total_bytes: int
    mem_percent: float
    tokens_per_s: float | None           # over the training steps (all processes), compilation excluded
    params: int
    device: str
    processes: int
    compiled: bool
    train_flops_per_token: int
    peak_flops_per_device: float | None
    mfu: float | None                    # model FLOPs utilisation, unrounded; None without a known peak
    provenance: Provenance
    # Written by later versions only: older summaries read with these defaults.
    compile_time_s: float = 0.0          # of time_s, compiling (each session's first step, the first evaluation)
    divergence_reference_loss: float | None = None  # the divergence rule's reference loss

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def write(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, dataclasses.asdict(self))

    @classmethod
    def read(cls, path: str | os.PathLike, hint: str = "is the run finished?") -> Summary:
        """summary.json checked field by field: ValueError naming the file and the field otherwise."""
        data = read_json(path, "run summary", expect=dict, hint=hint)
        try:
            return _build(cls, data, "")
        except ValueError as error:
            raise file_error("run summary", path, str(error)) from None


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: not a summary field")
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING:
                raise ValueError(f"{prefix}{name}: missing")
            continue
        values[name] = _checked(hints[name], data[name], f"{prefix}{name}")
    if cls is Summary and values["status"] not in STATUSES:
        raise ValueError(f"status: {values['status']!r} is not one of {', '.join(STATUSES)}")
    return cls(**values)


def _checked(hint: Any, value: Any, key: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return _build(hint, value, key + ".")
    if get_origin(hint) in (Union, types.UnionType):
        if value is None:
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    expected = {float: "a finite number", int: "an integer", str: "a string", bool: "true or false"}[hint]
    raise ValueError(f"{key}: expected {expected}, got {value!r}")


class _FieldNames:
    """`SUMMARY.final_val_loss` is "final_val_loss": a field's name, checked when it is looked up."""

    def __getattr__(self, name: str) -> str:
        if name not in {f.name for f in dataclasses.fields(Summary)}:
            raise AttributeError(f"Summary has no field {name!r}")
        return name


SUMMARY = _FieldNames()


def best_run(candidates: Iterable[T], summary_of: Callable[[T], Summary]) -> T | None:
    """The candidate whose run did not diverge and ended at the lowest final validation loss; None
    when none did. The rule that picks the run generation, export and the report's "best" use."""
    usable = [(c, loss) for c in candidates
              if not summary_of(c).diverged and (loss := summary_of(c).final_val_loss) is not None]
    best = min(usable, key=lambda pair: pair[1], default=None)
    return None if best is None else best[0]


# ---- building a summary (the trainer) -------------------------------------------------------

def summarize(config: RunConfig, progress: Progress, device: torch.device, processes: int, compiled: bool,
              final_val_loss: float | None, final_val_tokens: int, params: int) -> Summary:
    """The summary of a run that has ended, from its config, progress record and device."""
    from tinylm.nn import model_flops_utilization, training_flops_per_token
    from tinylm.training.hardware import run_peak_flops
    from tinylm.training.memory import memory_percent, memory_stats
    from tinylm.training.provenance import collect_provenance

    p = progress
    _, peak_mem, total_mem = memory_stats(device)
    # Throughput of the steps that trained, not of those that compiled (their time is compile_time_s).
    trained_tokens = p.tokens - p.compile_steps * config.tokens_per_step
    tokens_per_s = trained_tokens / p.train_time_s if p.train_time_s > 0 and trained_tokens > 0 else None
    peak = run_peak_flops(device, config.training)
    mfu = None
    if peak is not None and tokens_per_s is not None:
        mfu = model_flops_utilization(tokens_per_s / processes, config.model, peak)
    return Summary(
        name=config.name, status=p.status, steps=p.step, tokens=p.tokens,
        time_s=round(p.time_s, 3), train_time_s=round(p.train_time_s, 3), compile_time_s=round(p.compile_time_s, 3),
        final_train_loss=finite_or_none(p.last_train_loss), final_val_loss=finite_or_none(final_val_loss),
        final_val_tokens=final_val_tokens, best_val_loss=finite_or_none(p.best_val_loss),
        early_stop_loss=config.training.early_stop_loss, target_reached_step=p.target_reached_step,
        diverged_at_step=p.diverged_at_step, divergence_reference_loss=finite_or_none(p.initial_loss),
        peak_mem_bytes=peak_mem, mem_total_bytes=total_mem, mem_percent=memory_percent(peak_mem, total_mem),
        tokens_per_s=None if tokens_per_s is None else round(tokens_per_s, 1), params=params, device=str(device),
        processes=processes, compiled=compiled, train_flops_per_token=training_flops_per_token(config.model),
        peak_flops_per_device=peak, mfu=mfu, provenance=collect_provenance(device, p.started_at))


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second (e.g. 2026-12-01T21:48:09Z)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
