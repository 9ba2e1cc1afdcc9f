"""The edge-across-scale section: every sweep's edge of stability in one table, its distance above
the best rate against the model's width per setting (tokens per step, norm) with the points it is
compared with (the experiment log's), and the trend stated from the numbers."""
from __future__ import annotations

from collections import defaultdict

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import FuncFormatter

from tinylm.report import figures
from tinylm.report.edge import EDGE_COLUMNS, EdgeOfStability, criterion_text, edge_of_stability, edge_row
from tinylm.report.runs import Run
from tinylm.report.section import Inputs, Section
from tinylm.report.seeds import common_seeds, runs_at_seed
from tinylm.report.tables import Column, fmt_int, fmt_loss, fmt_rate, fmt_ratio, fmt_text

Setting = tuple[int, str]  # (tokens per step, norm)
COLUMNS = [Column("d_model", "d_model", fmt_int), Column("tokens_per_step", "tokens/step", fmt_int),
           Column("norm", "norm", fmt_text), *EDGE_COLUMNS]


def sweeps(runs: list[Run]) -> dict[tuple[int, int, str], list[Run]]:
    """The runs of each sweep, by (d_model, tokens per step, norm), read from their configs."""
    found: dict[tuple[int, int, str], list[Run]] = defaultdict(list)
    for run in runs:
        c = run.config
        found[c.model.d_model, c.tokens_per_step, c.model.norm].append(run)
    return dict(sorted(found.items(), key=lambda item: (item[0][2] != "pre", item[0][1], item[0][0])))


def edges(runs: list[Run]) -> dict[tuple[int, int, str], EdgeOfStability]:
    return {group: edge_of_stability(sorted(members, key=lambda r: r.lr)) for group, members in sweeps(runs).items()}


def scale_frame(found: dict[tuple[int, int, str], EdgeOfStability]) -> pd.DataFrame:
    rows = [{"d_model": d, "tokens_per_step": tokens, "norm": norm, **edge_row(edge)}
            for (d, tokens, norm), edge in found.items()]
    return pd.DataFrame(rows).astype(object)


def norm_text(norm: str) -> str:
    return {"pre": "RMSNorm (pre-norm)", "post": "RMSNorm (post-norm)", "none": "no norm"}.get(norm, f"norm={norm}")


def setting_text(setting: Setting) -> str:
    tokens, norm = setting
    return f"{norm_text(norm)} at {fmt_int(tokens)} tokens per step"


def trend(values: list[float]) -> str:
    """How a series over growing widths moves: falling, rising, the same, or neither (which end is higher)."""
    pairs = list(zip(values, values[1:]))
    if all(b == a for a, b in pairs):
        return "the same at every width"
    if all(b <= a for a, b in pairs):
        return "falling as the model widens"
    if all(b >= a for a, b in pairs):
        return "rising as the model widens"
    if values[-1] == values[0]:
        return "the same at the widest as at the narrowest, not in between"
    ends = "lower" if values[-1] < values[0] else "higher"
    return f"{ends} at the widest than at the narrowest, not monotonic in between"


def series_text(name: str, points: list[tuple[int, float]], fmt, widths: list[int]) -> str:
    """ "the smallest failing rate is 0.1, 5.5e-2 (falling as the model widens)", naming the widths
    where the series lacks some of `widths` (the setting's)."""
    text = f"{name} is {', '.join(fmt(value) for _, value in points)}"
    if [d for d, _ in points] != widths:
        text += f" at d_model {', '.join(str(d) for d, _ in points)}"
    return text + (f" ({trend([value for _, value in points])})" if len(points) >= 2 else "")


def trend_text(found: dict[tuple[int, int, str], EdgeOfStability], compare_with: list[dict]) -> str:
    """Per norm, the range of edge/best ratios; per setting, how the smallest failing rate, its ratio
    to the best rate and the LR sensitivity move as the width grows; then the points compared with."""
    by_setting: dict[Setting, list[tuple[int, EdgeOfStability]]] = defaultdict(list)
    for (d, tokens, norm), edge in found.items():
        by_setting[tokens, norm].append((d, edge))
    parts = []
    for norm in dict.fromkeys(norm for _, norm in by_setting):
        ratios = [edge.ratio for (_, n), points in by_setting.items() if n == norm
                  for _, edge in points if edge.ratio is not None]
        if ratios:
            low, high = min(ratios), max(ratios)
            span = f"{fmt_ratio(low)}x" + (f" to {fmt_ratio(high)}x" if high > low else "")
            counted = f"{len(ratios)} sweep" + "s" * (len(ratios) > 1)
            parts.append(f"With {norm_text(norm)}, the smallest failing rate is {span} the best rate over {counted}.")
    for setting, points in by_setting.items():
        points = sorted(points, key=lambda point: point[0])
        failing = [(d, edge.smallest_failing.lr) for d, edge in points if edge.smallest_failing]
        ratio_points = [(d, ratio) for d, edge in points if (ratio := edge.ratio) is not None]
        sensitivity = [(d, edge.lr_sensitivity) for d, edge in points if edge.lr_sensitivity is not None]
        widths = [d for d, _ in points]
        said = [series_text(name, series, fmt, widths) for name, series, fmt in (
            ("the smallest failing rate", failing, fmt_rate),
            ("its ratio to the best rate", ratio_points, lambda ratio: f"{fmt_ratio(ratio)}x"),
            ("the LR sensitivity", sensitivity, fmt_loss)) if series]
        unknown = [str(d) for d, edge in points if edge.smallest_failing is None]
        text = (f"With {setting_text(setting)}, at d_model {', '.join(map(str, widths))}: "
                + ("; ".join(said) if said else "no sweep has a failing rate"))
        if unknown and said:
            text += f"; no rate fails above the best at d_model {', '.join(unknown)}"
        parts.append(text + ".")
    for point in compare_with:
        compared = setting_text((point["tokens_per_step"], point["norm"]))
        parts.append(f"For comparison, {point['label']}: {fmt_ratio(point['ratio'])}x at d_model "
                     f"{point['d_model']}, {compared}.")
    return " ".join(parts)


def seeds_text(runs: list[Run]) -> str:
    """Whether every sweep has the same best and smallest failing rate at each seed alone (the
    table and figure are the first seed's); "" with one seed."""
    seeds = common_seeds(runs)
    if len(seeds) < 2:
        return ""
    rates = {seed: {group: (edge.best.lr if edge.best else None,
                            edge.smallest_failing.lr if edge.smallest_failing else None)
                    for group, edge in edges(runs_at_seed(runs, seed)).items()} for seed in seeds}
    groups = list(rates[seeds[0]])
    differ = [group for group in groups if len({rates[seed].get(group) for seed in seeds}) > 1]
    if not differ:
        return (f"At every seed ({', '.join(map(str, seeds))}), each sweep has the same best and smallest failing "
                f"rate as in the table (the first seed's).")

    def at(seed: int, group: tuple[int, int, str]) -> str:
        best, failing = rates[seed].get(group, (None, None))
        return (f"best {fmt_rate(best)} and " + (f"smallest failing {fmt_rate(failing)}" if failing else "none failing")
                + f" at seed {seed}")

    described = [f"d_model {group[0]}, {setting_text(group[1:])} ({', '.join(at(seed, group) for seed in seeds)})"
                 for group in differ]
    return (f"The best and smallest failing rates differ between seeds in {len(differ)} of {len(groups)} sweeps "
            f"(the table gives the first seed's): {'; '.join(described)}.")


def edge_vs_width(found: dict[tuple[int, int, str], EdgeOfStability], compare_with: list[dict]) -> plt.Figure:
    """Smallest failing / best rate against d_model, one line per setting; the bar spans the bracket
    the edge lies in (largest rate that trains / best up to smallest failing / best)."""
    fig, ax = plt.subplots(figsize=figures.SINGLE, layout="constrained")
    by_setting: dict[Setting, list[tuple[int, EdgeOfStability]]] = defaultdict(list)
    for (d, tokens, norm), edge in found.items():
        by_setting[tokens, norm].append((d, edge))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (setting, points) in enumerate(by_setting.items()):
        known = [(d, edge, ratio) for d, edge in sorted(points) if (ratio := edge.ratio) is not None]
        if not known:
            continue
        colour = colours[i % len(colours)]
        style = "-" if setting[1] == "pre" else "--"
        xs, ys = [d for d, _, _ in known], [ratio for _, _, ratio in known]
        # a known ratio has a best run
        low = [y - (edge.largest_stable.lr / edge.best.lr if edge.largest_stable and edge.best else y)
               for _, edge, y in known]
        ax.errorbar(xs, ys, yerr=[low, [0.0] * len(ys)], color=colour, linestyle=style, marker="o", capsize=3,
                    label=setting_text(setting))
    for point in compare_with:
        ax.plot([point["d_model"]], [point["ratio"]], marker="*", markersize=13, linestyle="none",
                color="black" if point["norm"] == "pre" else "0.55", label=point["label"], zorder=5)
    ax.axhline(1.0, color="0.7", linewidth=1, zorder=0)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("d_model (log scale)")
    ax.set_ylabel("smallest failing rate / best rate")
    ax.set_title("Edge of stability above the best rate, by width (bars: down to the largest rate that trains)")
    fig.legend(loc="outside lower center", ncol=2, frameon=False)
    return fig


def build(section: Section, inputs: Inputs) -> None:
    runs = inputs.runs
    found = edges(runs)
    intro = section.description or (f"{len(found)} learning-rate sweeps of the baseline: every width, tokens per "
                                     "step and norm of the study.")
    seeds = seeds_text(runs)
    section.paragraph(f"{intro} {criterion_text(next(iter(found.values())), runs)} "
                      f"{trend_text(found, inputs.compare_with)}" + (f" {seeds}" if seeds else ""))
    section.figure(edge_vs_width(found, inputs.compare_with), "edge_vs_width",
                   "Smallest failing rate over the best rate against the model's width, per setting")
    section.table(scale_frame(found), COLUMNS, "edge_vs_scale",
                  "The edge of stability of every sweep (failing: diverged or stopped learning)")
