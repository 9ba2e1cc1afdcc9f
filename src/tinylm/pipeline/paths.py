"""Where the pipeline keeps its files: the results tree, shared by the planner and the rule files."""
from __future__ import annotations

RESULTS = "results"


def tokenizer_dir(tok: str) -> str:
    return f"{RESULTS}/tokenizers/{tok}"


def tokens_path(tok: str, corpus: str, split: str) -> str:
    return f"{RESULTS}/tokens/{tok}/{corpus}/{split}.npy"
