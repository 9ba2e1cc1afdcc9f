"""`tinylm tokenizer-report`: compare trained tokenizers on several corpora (JSON + Markdown).

For each tokenizer: training time, peak memory and longest token (from its stats.json), and for
each (tokenizer, corpus) pair: the compression ratio in bytes/token on documents sampled from the
corpus, the encode throughput in bytes/s (one process, empty cache) and the time that throughput
implies for the 825 GB of the Pile.
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

from tinylm.files import read_json, write_json_atomic, write_text_atomic
from tinylm.tokenizer.pretokenize import check_input_file, iter_text
from tinylm.tokenizer.tokenizer import Tokenizer, longest_token

PILE_BYTES = 825e9


def iter_documents(path: str | Path, separator: str, scan_bytes: int | None = None):
    """The documents of a file, each ending at `separator` (or at the end of the file); with
    `scan_bytes`, only documents that end within about the first `scan_bytes` bytes."""
    pending, scanned = "", 0
    for block in iter_text(path):
        scanned += len(block.encode("utf-8"))
        *complete, pending = (pending + block).split(separator)
        yield from complete
        if scan_bytes is not None and scanned >= scan_bytes:
            return
    yield pending


def sample_documents(path: str | Path, count: int, separator: str, seed: int = 0,
                     scan_bytes: int | None = None) -> list[str]:
    """`count` non-empty documents drawn uniformly (reservoir sampling), whitespace-stripped."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for document in iter_documents(path, separator, scan_bytes):
        document = document.strip()
        if not document:
            continue
        seen += 1
        if len(sample) < count:
            sample.append(document)
        elif (slot := rng.randrange(seen)) < count:
            sample[slot] = document
    if not sample:
        raise ValueError(f"{path}: no documents found")
    return sample


def read_prefix(path: str | Path, max_bytes: int) -> str:
    """About the first `max_bytes` bytes of a text file (whole characters)."""
    parts, size = [], 0
    for block in iter_text(path, block_bytes=min(max_bytes, 2**20)):
        parts.append(block)
        size += len(block.encode("utf-8"))
        if size >= max_bytes:
            break
    return "".join(parts)


def tokenizer_summary(directory: Path, tokenizer: Tokenizer) -> dict:
    stats_path = directory / "stats.json"
    stats = read_json(stats_path, "tokenizer stats", expect=dict) if stats_path.exists() else {}
    longest = longest_token(tokenizer.vocab, tokenizer.special_ids.values())
    return {
        "dir": str(directory),
        "vocab_size": len(tokenizer.vocab),
        "training_time_s": stats.get("training_time_s"),
        "peak_memory_bytes": stats.get("peak_memory_bytes"),
        "training_input_bytes": stats.get("input_bytes"),
        "longest_token": longest.decode("utf-8", errors="replace"),
        "longest_token_bytes": len(longest),
    }


def build_report(tokenizers: dict[str, Path], corpora: dict[str, Path], documents: int = 10,
                 seed: int = 0, throughput_bytes: int = 2**20, separator: str = "<|endoftext|>",
                 scan_bytes: int | None = 64 * 2**20) -> dict:
    samples = {name: sample_documents(path, documents, separator, seed, scan_bytes) for name, path in corpora.items()}
    prefixes = {name: read_prefix(path, throughput_bytes) for name, path in corpora.items()}
    loaded = {name: Tokenizer.from_dir(directory) for name, directory in tokenizers.items()}
    report: dict[str, Any] = {
        "settings": {"documents": documents, "seed": seed, "throughput_bytes": throughput_bytes,
                     "separator": separator, "pile_bytes": PILE_BYTES,
                     "compiled_encoder": all(tokenizer.compiled for tokenizer in loaded.values())},
        "tokenizers": {name: tokenizer_summary(tokenizers[name], tokenizer) for name, tokenizer in loaded.items()},
        "corpora": {name: {"path": str(path), "sampled_documents": len(samples[name]),
                           "sampled_bytes": sum(len(d.encode("utf-8")) for d in samples[name])}
                    for name, path in corpora.items()},
        "compression": [],
        "throughput": [],
    }
    for tokenizer_name, tokenizer in loaded.items():
        for corpus_name in corpora:
            sample_bytes = report["corpora"][corpus_name]["sampled_bytes"]
            sample_tokens = sum(len(tokenizer.encode(d)) for d in samples[corpus_name])
            report["compression"].append({
                "tokenizer": tokenizer_name, "corpus": corpus_name, "bytes": sample_bytes,
                "tokens": sample_tokens, "bytes_per_token": sample_bytes / sample_tokens})
            tokenizer.clear_cache()  # throughput on unseen text
            text = prefixes[corpus_name]
            started = time.perf_counter()
            tokenizer.encode(text)
            seconds = time.perf_counter() - started
            nbytes = len(text.encode("utf-8"))
            report["throughput"].append({
                "tokenizer": tokenizer_name, "corpus": corpus_name, "bytes": nbytes, "seconds": seconds,
                "bytes_per_s": nbytes / seconds, "pile_825gb_s": PILE_BYTES / (nbytes / seconds)})
    return report


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2f} s"


def to_markdown(report: dict) -> str:
    settings = report["settings"]
    lines = ["# Tokenizers", "", "| tokenizer | vocabulary | training time | peak memory | longest token | bytes |",
             "|---|---:|---:|---:|---|---:|"]
    for name, info in report["tokenizers"].items():
        memory = "n/a" if info["peak_memory_bytes"] is None else f"{info['peak_memory_bytes'] / 2**20:.0f} MiB"
        lines.append(f"| {name} | {info['vocab_size']} | {_duration(info['training_time_s'])} | {memory} | "
                     f"`{info['longest_token']!r}` | {info['longest_token_bytes']} |")
    corpora = list(report["corpora"])
    lines += ["", f"## Compression (bytes/token on {settings['documents']} sampled documents, seed {settings['seed']})",
              "", "| tokenizer | " + " | ".join(corpora) + " |", "|---|" + "---:|" * len(corpora)]
    ratios = {(row["tokenizer"], row["corpus"]): row["bytes_per_token"] for row in report["compression"]}
    for name in report["tokenizers"]:
        lines.append(f"| {name} | " + " | ".join(f"{ratios[name, corpus]:.2f}" for corpus in corpora) + " |")
    encoder = "compiled encoder" if settings["compiled_encoder"] else "pure-Python encoder"
    lines += ["", f"## Encoding throughput (one process, {encoder}, empty cache, first "
              f"{settings['throughput_bytes'] / 2**20:.1f} MiB of each corpus)", "",
              "| tokenizer | corpus | MB/s | time for 825 GB (the Pile) |", "|---|---|---:|---:|"]
    for row in report["throughput"]:
        lines.append(f"| {row['tokenizer']} | {row['corpus']} | {row['bytes_per_s'] / 1e6:.2f} | "
                     f"{_duration(row['pile_825gb_s'])} |")
    return "\n".join(lines) + "\n"


# ---- tinylm tokenizer-report -----------------------------------------------------------------

def _named_paths(values: list[str], option: str) -> dict[str, Path]:
    named = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option} expects NAME=PATH, got {value!r}")
        if name in named:
            raise ValueError(f"{option} name {name!r} given twice")
        named[name] = Path(path)
    return named


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", action="append", required=True, metavar="NAME=DIR",
                        help="a trained tokenizer directory (repeat for several)")
    parser.add_argument("--corpus", action="append", required=True, metavar="NAME=TXT",
                        help="a text corpus to measure on (repeat for several)")
    parser.add_argument("--out-json", required=True, help="report as JSON")
    parser.add_argument("--out-md", required=True, help="report as Markdown tables")
    parser.add_argument("--documents", type=int, default=10, help="documents sampled per corpus for compression")
    parser.add_argument("--seed", type=int, default=0, help="seed of the document sample")
    parser.add_argument("--throughput-mb", type=float, default=1.0,
                        help="MiB of each corpus encoded to measure throughput (default: %(default)s)")
    parser.add_argument("--separator", default="<|endoftext|>", help="text that ends each document")
    parser.add_argument("--scan-mb", type=float, default=64.0,
                        help="sample documents from the first this many MiB of each corpus (0: whole file)")


def run(args: argparse.Namespace) -> int:
    tokenizers = _named_paths(args.tokenizer, "--tokenizer")
    corpora = _named_paths(args.corpus, "--corpus")
    for directory in tokenizers.values():
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {directory}")
    for path in corpora.values():
        check_input_file(path)
    if args.documents < 1 or args.throughput_mb <= 0 or args.scan_mb < 0:
        raise ValueError("--documents and --throughput-mb must be positive and --scan-mb not negative")
    report = build_report(tokenizers, corpora, args.documents, args.seed, int(args.throughput_mb * 2**20),
                          args.separator, int(args.scan_mb * 2**20) or None)
    markdown = to_markdown(report)
    write_json_atomic(args.out_json, report)
    write_text_atomic(args.out_md, markdown)
    print(markdown)
    return 0
