"""How tinylm writes numbers for people: durations, byte counts, large counts and config values.

One owner for each format, so the plan, the report and run names agree (the report's tables add
their placeholder for a missing value on top). Light on purpose: no torch, no pandas.
"""
from __future__ import annotations

from typing import Any


def fmt_duration(seconds: float) -> str:
    """Seconds in the largest unit that keeps the number at least 1: 4.2 s, 3.5 min, 12.0 h, 2.3 days."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.3g} s"


def fmt_bytes(value: float) -> str:
    """Binary units, e.g. 512.0 MiB."""
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fmt_si(number: float, unit: str = "") -> str:
    """Three significant digits and a decimal prefix: 328 M, 36.6 PFLOP/s, 7.81 GB."""
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= scale:
            return f"{number / scale:.3g} {prefix}{unit}"
    return f"{number:.3g} {unit}".rstrip()


def fmt_value(value: Any) -> str:
    """A config value as written in run names, labels and text: 3e-3, 1.5e-4, 0.5, 64, none, swiglu."""
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
