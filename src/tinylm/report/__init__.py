"""`tinylm report SECTION`: one report section's figures, tables and text, from finished runs.

`tinylm report index` assembles the sections into results/report/README.md. The modules:
`runs` (loading runs, labels, colours), `analysis` (findings and their sentences), `figures`,
`tables`, `sections` (one function per section) and `index`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# section folder -> heading, in report order
TITLES = {
    "tokenizer": "0. Tokenizers",
    "lr_sweep": "1. Learning rate",
    "batch_size": "2. Batch size",
    "generate": "3. Generation",
    "no_rmsnorm": "4. No RMSNorm",
    "post_norm": "5. Post-norm vs pre-norm",
    "nope": "6. NoPE vs RoPE",
    "silu": "7. SiLU vs SwiGLU",
    "owt": "8. OpenWebText",
}
# Sections built from JSON inputs (tokenizer report, generated text) rather than runs' curves.
RUNLESS = ("tokenizer", "generate")

# What each section writes besides section.md: figure stems (.png + .svg) and table stems (.csv + .md).
# workflow/rules/report.smk declares exactly these files as outputs.
CURVES = ["loss_vs_step", "loss_vs_tokens", "loss_vs_time"]
OUTPUTS: dict[str, dict[str, list[str]]] = {
    "tokenizer": {"figures": ["compression"], "tables": ["tokenizers", "compression"]},
    "lr_sweep": {"figures": ["lr_schedule", *CURVES, "final_loss_vs_lr"], "tables": ["lr_sweep", "edge_of_stability"]},
    "batch_size": {"figures": ["memory", *CURVES], "tables": ["batch_size"]},
    "generate": {"figures": [], "tables": ["samples", "sampling_settings"]},
    "no_rmsnorm": {"figures": ["loss_vs_step"], "tables": ["final_losses"]},
    "post_norm": {"figures": ["loss_vs_step"], "tables": ["final_losses"]},
    "nope": {"figures": ["loss_vs_step"], "tables": ["final_losses"]},
    "silu": {"figures": ["loss_vs_step"], "tables": ["final_losses"]},
    "owt": {"figures": CURVES, "tables": ["final_losses", "samples"]},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("section", choices=[*TITLES, "index"],
                        help="the section to write, or 'index' to assemble README.md from written sections")
    parser.add_argument("--out-dir", help="the section's folder, e.g. results/report/lr_sweep")
    parser.add_argument("--run", nargs=2, action="append", default=[], metavar=("LABEL", "RUN_DIR"),
                        help="a run to include, named in legends and tables by LABEL (its changed setting, "
                             "e.g. lr=3e-3); repeat for each run")
    parser.add_argument("--baseline", metavar="LABEL", help="the --run LABEL drawn dashed and compared against")
    parser.add_argument("--colour-order", nargs="+", default=[], metavar="RUN_NAME",
                        help="every run name of the whole report, in a fixed order: fixes each run's colour "
                             "across sections")
    parser.add_argument("--tokenizer-report", metavar="JSON", help="tokenizer section: tinylm tokenizer-report output")
    parser.add_argument("--generate", metavar="JSON", help="generate/owt sections: tinylm generate output")
    parser.add_argument("--sampling-grid", metavar="JSON",
                        help="generate section: tinylm generate output over several temperatures and top-ps")
    parser.add_argument("--max-batch", metavar="JSON", help="batch_size section: tinylm max-batch output")
    parser.add_argument("--train-text", metavar="TXT",
                        help="generate/owt sections: the generating run's training text; the section reports "
                             "the share of generated words that occur in it")
    parser.add_argument("--sections", nargs="+", default=[], metavar="SECTION_MD",
                        help="index: the section.md files to assemble")
    parser.add_argument("--out", metavar="MD", help="index: the README.md to write")


def run(args: argparse.Namespace) -> int:
    if args.section == "index":
        from tinylm.report.index import write_index

        if not args.out or not args.sections:
            raise ValueError("tinylm report index: --out and --sections are required")
        print(write_index(args.sections, args.out))
        return 0
    if not args.out_dir:
        raise ValueError(f"tinylm report {args.section}: --out-dir is required")
    from tinylm.report.runs import find_run, load_runs, read_json
    from tinylm.report.sections import Inputs, build

    def option_json(path: str | None, option: str) -> dict | None:
        return None if path is None else read_json(Path(path), f"{option} {path!r}")

    runs = load_runs([tuple(pair) for pair in args.run], args.colour_order)
    inputs = Inputs(runs=runs, baseline=find_run(runs, args.baseline),
                    tokenizer_report=option_json(args.tokenizer_report, "--tokenizer-report"),
                    generate=option_json(args.generate, "--generate"),
                    sampling_grid=option_json(args.sampling_grid, "--sampling-grid"),
                    max_batch=option_json(args.max_batch, "--max-batch"),
                    train_text=Path(args.train_text) if args.train_text else None)
    print(build(args.section, Path(args.out_dir), inputs))
    return 0
