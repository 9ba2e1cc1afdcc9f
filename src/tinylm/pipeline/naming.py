"""Config values as they appear in run names, labels and the plan's "changes against the baseline"."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tinylm.config import RunConfig

# Short names for swept keys in run names and labels; other keys use their last part.
SHORT_KEYS = {"optimizer.lr": "lr", "training.batch_size": "batch"}


def format_value(value: Any) -> str:
    """Compact, path-safe text for a config value: 3e-3, 0.5, 64, none, swiglu."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and (abs(value) < 0.1 or abs(value) >= 1e5):
            mantissa, exponent = f"{value:.6e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    return str(value)


def setting_text(key: str, value: Any) -> str:
    return f"{SHORT_KEYS.get(key, key.rsplit('.', 1)[-1])}={format_value(value)}"


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Settings that say how a run is observed, not what it is: left out of "what it changes".
BOOKKEEPING = ("name", "training.eval_interval", "training.log_interval", "training.checkpoint_interval")


def config_changes(run: RunConfig, baseline: RunConfig) -> str:
    """The run's settings that differ from the baseline's, e.g. "norm=none, lr=1e-3"; a new corpus or
    tokenizer shows as corpus=... / tokenizer=... (from the data paths)."""
    ours, theirs = _flatten(run.to_dict()), _flatten(baseline.to_dict())
    changed = [key for key in ours if key not in BOOKKEEPING and ours[key] != theirs.get(key)]
    texts = []
    for key in changed:
        value = ours[key]
        if key == "data.train_tokens":   # results/tokens/<tok>/<corpus>/train.npy
            tok, corpus = Path(value).parts[-3:-1]
            texts += [f"corpus={corpus}", f"tokenizer={tok}"]
        elif not key.startswith("data."):
            texts.append(setting_text(key, float(f"{value:.3g}") if isinstance(value, float) else value))
    return ", ".join(dict.fromkeys(texts))
