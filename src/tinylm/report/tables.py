"""Tables: a pandas DataFrame written as CSV (full precision) and Markdown (formatted for reading).

The formatters here are also what the section text uses, so every number the text states appears
in a table written exactly the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from tinylm.files import atomic_path, write_text_atomic

MISSING = "—"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _formatter(template: str) -> Callable[[Any], str]:
    def fmt(value: Any) -> str:
        return MISSING if _missing(value) else template.format(value)
    return fmt


fmt_loss = _formatter("{:.3f}")
fmt_signed = _formatter("{:+.3f}")      # a difference, always with its sign: +0.012 / -0.340
fmt_ratio = _formatter("{:.2f}")
fmt_int = _formatter("{:,.0f}")
fmt_speed = _formatter("{:,.0f}")
fmt_percent = _formatter("{:.1f}%")
fmt_share = _formatter("{:.1%}")        # a fraction (0-1) as a percentage: 0.985 -> 98.5%


def fmt_rate(value: Any) -> str:
    """A learning rate as written in configs: 3e-3, 1.5e-4, 1e-2, 0.3."""
    if _missing(value):
        return MISSING
    mantissa, exponent = f"{value:.3e}".split("e")
    if int(exponent) >= -1:  # 0.3, 10: plain; 3e-3: exponent
        return f"{value:g}"
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def fmt_bytes(value: Any) -> str:
    """Binary units, e.g. 512.0 MiB."""
    if _missing(value):
        return MISSING
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fmt_duration(seconds: Any) -> str:
    """Seconds in the largest unit that keeps the number at least 1: 4.2 s, 3.5 min, 12.0 h, 2.3 days."""
    if _missing(seconds):
        return MISSING
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s"


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
