"""Writing one report section: its figures, tables and `section.md`, into its folder, as one set.

`section.md` starts with the section's heading, then the kind's paragraphs, figures (PNG linked,
SVG beside it) and tables (Markdown inline, CSV linked). Links are relative to the section folder;
the index rewrites them when it assembles `results/report/README.md`. Every file is written to a
temporary folder first and moved into place once the whole section is written (`file_set`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import matplotlib.pyplot as plt
import pandas as pd

from tinylm.files import write_text_atomic
from tinylm.report import KINDS, figures
from tinylm.report.file_set import file_set
from tinylm.report.kinds import CURVES, Kind
from tinylm.report.runs import Run
from tinylm.report.seeds import figure_note
from tinylm.report.tables import Column, write_table

T = TypeVar("T")


@dataclass
class Inputs:
    """Everything a section may read besides its runs (JSON files already parsed). Each run carries
    its replicas at further seeds (`Run.replicas`), the baseline's too."""

    runs: list[Run]
    baseline: Run | None = None
    tokenizer_report: dict | None = None
    generate: dict | None = None
    sampling_grid: dict | None = None
    max_batch: dict | None = None
    train_text: Path | None = None     # the generating run's training text, to look the generated words up in
    rate_sweep: bool = False           # its runs (but the baseline) are one sweep over learning rates
    compare_with: list[dict] = field(default_factory=list)  # points from elsewhere drawn beside its own


class Section:
    """Collects one section's Markdown while its figures and tables are written to `out_dir`.
    `key`: the section's folder name, which names it in errors."""

    def __init__(self, kind: Kind, title: str, description: str, key: str, out_dir: Path,
                 tables: tuple[str, ...] | None = None):
        self.kind, self.description, self.key, self.out_dir = kind, description, key, Path(out_dir)
        self.tables = kind.tables if tables is None else tables  # the tables it must write
        self.parts = [f"## {title}\n"]
        self.written: list[str] = []

    def paragraph(self, text: str) -> None:
        self.parts.append(text.strip() + "\n")

    def markdown(self, text: str) -> None:
        """Markdown as it is (quoted samples)."""
        self.parts.append(text)

    def figure(self, fig: plt.Figure, stem: str, caption: str) -> None:
        png, svg = figures.save(fig, self.out_dir, stem)
        self.written += [png, svg]
        self.parts.append(f"![{caption}]({png})\n\n*{caption}* ([SVG]({svg}))\n")

    def curves(self, runs: list[Run], baseline: Run | None, what: str) -> None:
        """The loss-curve figures (CURVES): against steps, tokens and wall-clock time."""
        for x, stem in zip(figures.X_AXES, CURVES):
            self.figure(figures.loss_curves(runs, x, baseline), stem,
                        f"{what}: train and validation loss against {figures.X_AXES[x]}{figure_note(runs)}")

    def table(self, frame: pd.DataFrame, columns: list[Column], stem: str, caption: str,
              csv_only: tuple[str, ...] = ()) -> None:
        """A table as CSV and Markdown; the columns `csv_only` go into the CSV alone."""
        markdown = write_table(frame, columns, self.out_dir, stem, csv_only)
        self.written += [f"{stem}.csv", f"{stem}.md"]
        self.parts.append(f"**{caption}** ([CSV]({stem}.csv))\n\n{markdown}")

    def required(self, value: T | None, option: str) -> T:
        """An input the kind cannot do without: `value`, or an error naming its option."""
        if not value:
            raise ValueError(f"tinylm report {self.key}: {option} is required")
        return value

    def write(self) -> None:
        expected = [f"{s}.{ext}" for s in self.kind.figures for ext in ("png", "svg")]
        expected += [f"{s}.{ext}" for s in self.tables for ext in ("csv", "md")]
        missing = sorted(set(expected) - set(self.written))
        if missing:  # the Snakemake rule declares the kind's files: a section must write all of them
            raise AssertionError(f"section {self.key} did not write {', '.join(missing)}")
        write_text_atomic(self.out_dir / "section.md", "\n".join(self.parts))


def build_section(kind_name: str, title: str, description: str, out_dir: Path, inputs: Inputs) -> Path:
    """Write the section of kind `kind_name` into `out_dir`, all its files or none (a failure
    leaves the previous ones); the path of its section.md."""
    kind = KINDS[kind_name]
    if kind.runs and not inputs.runs:
        raise ValueError(f"tinylm report {kind_name}: at least one --run LABEL RUN_DIR is required")
    with file_set(out_dir) as staging:
        section = Section(kind, title, description, out_dir.name, staging, kind.tables_for(int(inputs.rate_sweep)))
        kind.build(section, inputs)
        if inputs.rate_sweep:
            from tinylm.report.edge import write_edge

            write_edge(section, [run for run in inputs.runs if run is not inputs.baseline])
        section.write()
    return out_dir / "section.md"
