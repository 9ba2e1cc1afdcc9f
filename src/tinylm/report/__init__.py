"""`tinylm report KIND`: one report section's figures, tables and text, from finished runs.

`tinylm report index` assembles the sections into results/report/README.md.

Each kind of section is one package, `tinylm.report.kinds.<kind>` (tokenizer, lr_sweep, batch_size,
generate, variant, corpus), in two parts:

- its `__init__.py`, light (no pandas, matplotlib or torch): `KIND`, what the section writes
  (figures, tables) and reads (inputs, runs), where its sections go in the report, and `plan`, how
  the experiment plan (tinylm.pipeline.plan) makes its section from the config;
- its `section.py`, heavy: `build(section, inputs)`, the section's findings, text, figures and
  tables. `Kind.build` imports it only when a section of that kind is built.

`KINDS` (name -> Kind) is discovered from the packages, so adding a kind is adding its package. The
Snakefile imports tinylm.pipeline.plan and this package to plan and to declare each rule's files
(`KINDS[kind].figures/.tables/.inputs/.runs`): both stay light because nothing there imports a
kind's `section`.

Shared by the kinds: `runs` (loading runs, labels, colours, replicas at further seeds), `findings`
(what several kinds state about single runs), `seeds` (means and spreads over seeds, and whether a
finding holds at every seed), `samples` (generated text), `figures` (saving, loss curves, line styles),
`tables` (formatters, CSV + Markdown), `section` (the writer: a section's files as one set) and
`index` with `overview` (README.md, the tables of runs and environments).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tinylm.report.kinds import Kind, discover

# name -> Kind: every kind of section, read by the plan and by the Snakemake rules (figures, tables,
# inputs, runs).
KINDS: dict[str, Kind] = discover()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=[*KINDS, "index"],
                        help="the kind of section to write, or 'index' to assemble README.md from written sections")
    parser.add_argument("--out-dir", help="the section's folder, e.g. results/report/lr_sweep")
    parser.add_argument("--title", help="the section's heading, e.g. '4. No RMSNorm' (default: the folder's name)")
    parser.add_argument("--description", default="",
                        help="variant and corpus sections: the sentence that says what is compared; generate: "
                             "which run the samples come from")
    parser.add_argument("--run", nargs=2, action="append", default=[], metavar=("LABEL", "RUN_DIR"),
                        help="a run to include, named in legends and tables by LABEL (its changed setting, "
                             "e.g. lr=3e-3); repeat for each run")
    parser.add_argument("--replica", nargs=2, action="append", default=[], metavar=("LABEL", "RUN_DIR"),
                        help="the --run of that LABEL at a further seed (config seeds): tables give the mean and "
                             "spread over seeds, figures draw every seed, texts say whether a finding holds at "
                             "every seed; repeat for each")
    parser.add_argument("--baseline", metavar="LABEL", help="the --run LABEL drawn dashed and compared against")
    parser.add_argument("--colour-order", nargs="+", default=[], metavar="RUN_NAME",
                        help="every run name of the whole report, in a fixed order: fixes each run's colour "
                             "across sections")
    parser.add_argument("--tokenizer-report", metavar="JSON", help="tokenizer section: tinylm tokenizer-report output")
    parser.add_argument("--generate", metavar="JSON", help="generate/corpus sections: tinylm generate output")
    parser.add_argument("--sampling-grid", metavar="JSON",
                        help="generate section: tinylm generate output over several temperatures and top-ps")
    parser.add_argument("--max-batch", metavar="JSON", help="batch_size section: tinylm max-batch output")
    parser.add_argument("--train-text", metavar="TXT",
                        help="generate/corpus sections: the generating run's training text; the section reports "
                             "the share of generated words that occur in it")
    parser.add_argument("--rate-sweep", action="store_true",
                        help="the runs but the baseline are one sweep over learning rates: state its edge of "
                             "stability too (a paragraph and the edge_of_stability table)")
    parser.add_argument("--compare-with", metavar="JSON", default="[]",
                        help="edge_scale section: points drawn beside the study's, a JSON list of objects with "
                             "d_model, tokens_per_step, norm, ratio and label (config compare_with)")
    parser.add_argument("--sections", nargs="+", default=[], metavar="SECTION_MD",
                        help="index: the section.md files to assemble")
    parser.add_argument("--out", metavar="MD", help="index: the README.md to write")
    parser.add_argument("--plan", metavar="JSON",
                        help="index: the pipeline's plan (results/plan.json); adds the tables of runs and "
                             "environments (runs.csv, environments.csv beside README.md)")
    parser.add_argument("--runs-dir", default="results/runs", metavar="DIR",
                        help="index, with --plan: the folder of the runs' folders (default results/runs)")


def compare_with(text: str) -> list[dict]:
    """--compare-with: a JSON list of points, each with the keys the edge_scale section draws."""
    import json

    try:
        points = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--compare-with: not JSON ({error.msg} at column {error.colno})") from None
    keys = {"d_model", "tokens_per_step", "norm", "ratio", "label"}
    if not isinstance(points, list) or not all(isinstance(p, dict) and keys <= set(p) for p in points):
        raise ValueError(f"--compare-with: expected a list of objects with {', '.join(sorted(keys))}")
    return points


def run(args: argparse.Namespace) -> int:
    if args.kind == "index":
        from tinylm.report.index import write_index

        if not args.out or not args.sections:
            raise ValueError("tinylm report index: --out and --sections are required")
        print(write_index(args.sections, args.out, Path(args.plan) if args.plan else None, Path(args.runs_dir)))
        return 0
    if not args.out_dir:
        raise ValueError(f"tinylm report {args.kind}: --out-dir is required")
    from tinylm.files import read_json
    from tinylm.report.runs import find_run, load_runs
    from tinylm.report.section import Inputs, build_section

    def option_json(path: str | None, option: str) -> dict | None:
        return None if path is None else read_json(path, option, expect=dict)

    runs = load_runs([tuple(pair) for pair in args.run], args.colour_order, [tuple(pair) for pair in args.replica])
    inputs = Inputs(runs=runs, baseline=find_run(runs, args.baseline),
                    tokenizer_report=option_json(args.tokenizer_report, "--tokenizer-report"),
                    generate=option_json(args.generate, "--generate"),
                    sampling_grid=option_json(args.sampling_grid, "--sampling-grid"),
                    max_batch=option_json(args.max_batch, "--max-batch"),
                    train_text=Path(args.train_text) if args.train_text else None, rate_sweep=args.rate_sweep,
                    compare_with=compare_with(args.compare_with))
    out_dir = Path(args.out_dir)
    print(build_section(args.kind, args.title or out_dir.name, args.description, out_dir, inputs))
    return 0
