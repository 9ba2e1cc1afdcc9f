"""The `tinylm` command line: one subcommand per pipeline step.

Each subcommand lives in the module that does the work. That module defines
`add_arguments(parser)` and `run(args) -> int`; it is imported only when its command runs, so
`tinylm --help` and light commands stay fast (no torch import).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from tinylm.files import one_line, os_error_text

# name -> (module, one-line help). Keep in pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("tinylm.pipeline.plan_command", "print the runs a pipeline config would train, before any of them"),
    "download": ("tinylm.data.download", "fetch a corpus file (URL, mirror or local path) into the cache"),
    "train-bpe": ("tinylm.tokenizer.training", "train a byte-level BPE tokenizer on a text file"),
    "tokenize": ("tinylm.tokenizer.dataset", "encode a text file into a .npy array of token ids"),
    "tokenizer-report": ("tinylm.tokenizer.report", "compare trained tokenizers (compression, speed)"),
    "train": ("tinylm.training.trainer", "train a Transformer LM from a run config"),
    "refine-rates": ("tinylm.pipeline.refine", "one round of a learning-rate sweep's refinement: the rate to add"),
    "max-batch": ("tinylm.training.max_batch", "largest batch size whose training step fits in memory"),
    "evaluate": ("tinylm.inference.evaluate", "loss and perplexity of a checkpoint on a token array"),
    "generate": ("tinylm.inference.generate", "sample text from a checkpoint"),
    "export-hf": ("tinylm.inference.export_hf", "export a run as a Hugging Face transformers (Llama) model folder"),
    "report": ("tinylm.report", "write one report section's tables, figures and text"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinylm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, OSError) as error:
        # Bad input, or a file that cannot be written: one line naming the culprit, no traceback.
        text = os_error_text(error) if isinstance(error, OSError) else one_line(str(error))
        print(f"tinylm {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
