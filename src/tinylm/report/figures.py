"""Figures drawn with matplotlib's non-interactive Agg backend, saved as PNG and SVG.

Conventions shared by every figure: a run keeps its colour everywhere (`Run.colour`), the legend
names it by its changed setting, a baseline is dashed and variants solid, a run's replicas at further
seeds are drawn thinner in its colour and style, and a diverged run ends in an x (drawn at the top
edge when its loss left the plot) with "(diverged)" in the legend.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter  # noqa: E402

from tinylm.files import atomic_path  # noqa: E402
from tinylm.report.runs import Run  # noqa: E402

DPI = 120
WIDE = (8.0, 4.0)      # two panels side by side: 960 x 480 px, readable at 100%
SINGLE = (7.0, 4.0)    # one panel: 840 x 480 px

plt.rcParams.update({
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "font.size": 9, "legend.fontsize": 8, "axes.titlesize": 10,
    "svg.hashsalt": "tinylm",  # stable element ids, so an unchanged figure is an unchanged file
})

X_AXES = {
    "step": "optimizer step",
    "tokens": "training tokens",
    "time_s": "wall-clock time (s)",
}
LOSS_UNIT = "(nats/token)"


def save(fig: plt.Figure, out_dir: Path, stem: str) -> list[str]:
    """Write `stem`.png and `stem`.svg atomically; return their file names."""
    names = []
    for fmt, extra in (("png", {"dpi": DPI}), ("svg", {"metadata": {"Date": None}})):
        name = f"{stem}.{fmt}"
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format=fmt, **extra)
        names.append(name)
    plt.close(fig)
    return names


def _spans_decades(values) -> bool:
    values = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return len(values) >= 2 and max(values) / min(values) >= 10


def line_style(run: Run, baseline: Run | None) -> dict:
    return {"color": run.colour, "linestyle": "--" if run is baseline else "-", "linewidth": 1.6}


def replica_style(run: Run, baseline: Run | None) -> dict:
    """The line of one of `run`'s replicas: its colour and dashes, thinner and lighter."""
    return {**line_style(run, baseline), "linewidth": 0.8, "alpha": 0.6}


def finite_points(run: Run, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    frame = run.metrics[[x, y]].replace([np.inf, -np.inf], np.nan).dropna()
    return frame[x].to_numpy(float), frame[y].to_numpy(float)


def _set_loss_limits(ax: plt.Axes, values: list[np.ndarray]) -> None:
    """Fit the y axis to the plotted losses of the runs that trained, so that a diverged run's
    blow-up does not flatten them."""
    flat = np.concatenate(values or [np.array([])])
    if flat.size == 0:
        return
    low, high = float(flat.min()), float(flat.max())
    if _spans_decades([low, high]):
        ax.set_yscale("log")
        ax.set_ylim(low / 1.15, high * 1.15)
    else:
        pad = 0.05 * (high - low) or 0.1
        ax.set_ylim(low - pad, high + pad)


def x_mark(ax: plt.Axes, run: Run, x: float, y: float) -> None:
    """The x that marks where a diverged run stopped."""
    ax.plot([x], [y], marker="x", markersize=9, markeredgewidth=2.2, color=run.colour, zorder=5)


def _mark_divergence(ax: plt.Axes, run: Run, x: float, y: float) -> None:
    """An x where the run stopped; held just inside the top edge when the loss is off the plot."""
    bottom, top = ax.get_ylim()
    inside = top - 0.04 * (top - bottom) if ax.get_yscale() == "linear" else top / 1.04
    x_mark(ax, run, x, min(y, inside))


def _set_x(ax: plt.Axes, x: str, log: bool) -> None:
    ax.set_xlabel(X_AXES[x] + (" (log scale)" if log else ""))
    if log:
        ax.set_xscale("log")
    if x == "tokens":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    elif log:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def loss_curves(runs: list[Run], x: str = "step", baseline: Run | None = None, title: str = "") -> plt.Figure:
    """Train loss (left) and validation loss (right) against steps, tokens or wall-clock time."""
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=WIDE, layout="constrained", sharex=True)
    # Each run at every seed: (the run it belongs to, the run at that seed).
    drawn = [(run, at_seed) for run in runs for at_seed in run.at_seeds]
    # The axes fit the runs that did not diverge: a run that blew up early is short anyway.
    fitted = [not at_seed.diverged for _, at_seed in drawn]
    fitted = fitted if any(fitted) else [True] * len(drawn)
    # A log x axis when the runs' lengths span decades (e.g. batch 1 vs 128 at one token budget).
    log = _spans_decades([at_seed.metrics[x].max() for (_, at_seed), fit in zip(drawn, fitted) if fit])
    for column, ax in (("train_loss", ax_train), ("val_loss", ax_val)):
        points = [finite_points(at_seed, x, column) for _, at_seed in drawn]
        plotted = []
        for (run, at_seed), (xs, ys) in zip(drawn, points):
            keep = xs > 0 if log else np.ones_like(xs, dtype=bool)  # a log axis has no 0
            plotted.append(ys[keep])
            if at_seed is not run:
                ax.plot(xs[keep], ys[keep], **replica_style(run, baseline))
                continue
            ax.plot(xs[keep], ys[keep], label=run.legend if column == "train_loss" else None,
                    marker="o" if column == "val_loss" else None, markersize=3, **line_style(run, baseline))
        _set_loss_limits(ax, [values for values, fit in zip(plotted, fitted) if fit])
        ax.set_ylabel(f"{'train' if column == 'train_loss' else 'validation'} loss {LOSS_UNIT}")
        ax.set_title("Training loss" if column == "train_loss" else "Validation loss (fixed evaluation batches)")
        _set_x(ax, x, log)
        for (_, at_seed), (xs, ys) in zip(drawn, points):
            if at_seed.diverged and xs.size:
                _mark_divergence(ax, at_seed, xs[-1], ys[-1])
    if title:
        fig.suptitle(title)
    fig.legend(loc="outside lower center", ncol=min(len(runs), 5), frameon=False)
    return fig


