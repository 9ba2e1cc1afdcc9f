"""Where the pipeline keeps its files: one results folder per config (its `results_dir`), the same
tree in each, shared by the planner and the rule files.

    results_dir_for(["config/config.yaml"])                                   # "results"
    results_dir_for(["config/test.yaml"])                                     # "results/test"
    results_dir_for(["config/config.yaml", "config/official-corpora.yaml"])   # "results/official-corpora"
    tokens_path(config["results_dir"], "tinystories", "tinystories", "train")

    python -m tinylm.pipeline.paths [SNAKEMAKE ARGS] --configfile FILE...      # prints the folder (make run)
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_RESULTS = "results"
# The top level of a results folder (workflow/rules/common.smk). Other configs' folders sit beside
# these in results/, so no config may be named after one.
TREE = ("cache", "checkpoints", "configs", "downloads", "export", "generate", "logs", "max_batch", "plan.json",
        "report", "runs", "tokenizers", "tokens")


def results_dir_for(configfiles: Sequence[str | Path]) -> str:
    """The results folder of a config made of `configfiles` that names none: results/ for
    config/config.yaml, which every other file amends or replaces, else results/<the other files'
    names without .yaml, joined by '+'>."""
    from tinylm.pipeline.config import DEFAULT_CONFIGFILE

    default = Path(DEFAULT_CONFIGFILE).parts
    names = [Path(f).stem for f in configfiles if Path(f).parts[-len(default):] != default]
    return f"{DEFAULT_RESULTS}/{'+'.join(names)}" if names else DEFAULT_RESULTS


def check_results_dir(results: str) -> None:
    """A ValueError where `results` is a folder of the default config's results tree."""
    parent, _, name = results.rpartition("/")
    if parent == DEFAULT_RESULTS and name in TREE:
        raise ValueError(f"config results_dir: {results} is a folder of the default config's results: choose "
                         f"another (set results_dir, or rename the config file it is named after)")


def tokenizer_dir(results: str, tok: str) -> str:
    return f"{results}/tokenizers/{tok}"


def tokens_path(results: str, tok: str, corpus: str, split: str) -> str:
    return f"{results}/tokens/{tok}/{corpus}/{split}.npy"


def main(argv: list[str] | None = None) -> int:
    from tinylm.pipeline.config import DEFAULT_CONFIGFILE, parse_overrides, resolve_config

    parser = argparse.ArgumentParser(
        prog="python -m tinylm.pipeline.paths", allow_abbrev=False,
        description="Print the results folder of the config that snakemake would run with these arguments "
                    "(--configfile and --config are read, every other argument is ignored).")
    parser.add_argument("--configfile", "--configfiles", nargs="+", default=[], dest="configfiles")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE")
    args, _ = parser.parse_known_args(argv)
    try:
        config = resolve_config(args.configfiles or [DEFAULT_CONFIGFILE], parse_overrides(args.config))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(config["results_dir"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
