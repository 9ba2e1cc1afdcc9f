"""Config values as they appear in run names, labels and the plan's "changes against the baseline"."""
from __future__ import annotations

from typing import Any

from tinylm.config import RunConfig
from tinylm.formatting import fmt_value

# Short names for swept keys in run names and labels; other keys use their last part.
SHORT_KEYS = {"optimizer.lr": "lr", "training.batch_size": "batch"}


def setting_name(key: str) -> str:
    """A setting's name in run names and labels: optimizer.lr -> lr, model.norm -> norm."""
    return SHORT_KEYS.get(key, key.rsplit(".", 1)[-1])


def setting_text(key: str, value: Any) -> str:
    return f"{setting_name(key)}={fmt_value(value)}"


def config_changes(run: RunConfig, baseline: RunConfig, data: dict[str, tuple[str, str]] | None = None) -> str:
    """The run's settings that differ from the baseline's, e.g. "norm=none, lr=1e-3", leaving out
    how a run is named, observed and fed; `data` gives {"corpus": (the run's, the baseline's), ...},
    shown where they differ (corpus=owt, tokenizer=owt)."""
    leave_out = ("identity", "observation", "data")
    ours, theirs = run.settings(leave_out), baseline.settings(leave_out)
    texts = [setting_text(key, float(f"{value:.3g}") if isinstance(value, float) else value)
             for key, value in ours.items() if value != theirs.get(key)]
    texts += [f"{key}={value}" for key, (value, base) in (data or {}).items() if value != base]
    return ", ".join(texts)
