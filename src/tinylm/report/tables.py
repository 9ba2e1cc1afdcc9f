"""Tables: a pandas DataFrame written as CSV (full precision) and Markdown (formatted for reading).

The formatters here are also what the section text uses, so every number the text states appears
in a table written exactly the same way.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tinylm import formatting
from tinylm.files import atomic_path, write_text_atomic
from tinylm.formatting import fmt_value

MISSING = "—"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _or_missing(fmt: Callable[[Any], str]) -> Callable[[Any], str]:
    def formatted(value: Any) -> str:
        return MISSING if _missing(value) else fmt(value)
    return formatted


def _formatter(template: str) -> Callable[[Any], str]:
    return _or_missing(template.format)


fmt_loss = _formatter("{:.3f}")
fmt_signed = _formatter("{:+.3f}")      # a difference, always with its sign: +0.012 / -0.340
fmt_ratio = _formatter("{:.2f}")
fmt_int = _formatter("{:,.0f}")
fmt_speed = _formatter("{:,.0f}")
fmt_percent = _formatter("{:.1f}%")
fmt_share = _formatter("{:.1%}")        # a fraction (0-1) as a percentage: 0.985 -> 98.5%
fmt_rate = _or_missing(lambda value: fmt_value(float(value)))   # a learning rate as in configs: 3e-3, 0.3
fmt_bytes = _or_missing(formatting.fmt_bytes)                   # binary units: 512.0 MiB
fmt_duration = _or_missing(formatting.fmt_duration)             # 4.2 s, 3.5 min, 12.0 h, 2.3 days


def fmt_token(value: Any) -> str:
    """A token as code, its whitespace visible: `' the'`."""
    return MISSING if _missing(value) else "`" + repr(str(value)).replace("`", "'") + "`"


def fmt_excerpt(value: Any, length: int = 100) -> str:
    """The first `length` characters of a text on one line, with … when cut."""
    if _missing(value):
        return MISSING
    text = " ".join(str(value).split())
    return text if len(text) <= length else text[:length].rstrip() + "…"


def fmt_text(value: Any) -> str:
    if _missing(value):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@dataclass(frozen=True)
class Column:
    key: str                                  # CSV header and DataFrame column
    header: str                               # Markdown header, with the unit
    fmt: Callable[[Any], str] = fmt_text


def markdown_table(frame: pd.DataFrame, columns: list[Column]) -> str:
    lines = ["| " + " | ".join(c.header for c in columns) + " |",
             "|" + "|".join("---" if c.fmt in (fmt_text, fmt_token, fmt_excerpt) else "---:" for c in columns) + "|"]
    for _, row in frame.iterrows():
        cells = [c.fmt(_plain(row[c.key])).replace("|", "\\|").replace("\n", " ") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers; pandas' missing markers -> None."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def write_table(frame: pd.DataFrame, columns: list[Column], out_dir: Path, stem: str,
                csv_only: tuple[str, ...] = ()) -> str:
    """Write `stem`.csv and `stem`.md into `out_dir`; return the Markdown. Columns `csv_only` go
    into the CSV alone (after the others)."""
    missing = [c.key for c in columns if c.key not in frame.columns]
    if missing:
        raise ValueError(f"table {stem}: no column {missing[0]!r}")
    with atomic_path(out_dir / f"{stem}.csv") as tmp:
        frame[[c.key for c in columns] + list(csv_only)].to_csv(tmp, index=False)
    markdown = markdown_table(frame, columns)
    write_text_atomic(out_dir / f"{stem}.md", markdown)
    return markdown
