"""`tinylm tokenize`: a text file -> a .npy array of token ids, in parallel and in constant memory.

The file is cut into chunks at special tokens (so each chunk encodes exactly as inside the whole
file). Worker processes encode chunks and write each one's ids to a part file; the parts are then
copied in order into a memory-mapped .npy of the final length, so neither the text nor the ids
need to fit in RAM.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinylm.files import atomic_path
from tinylm.tokenizer.pretokenize import (
    DEFAULT_CHUNK_BYTES,
    check_input_file,
    iter_text,
    parallel_chunks,
    process_pool,
)
from tinylm.tokenizer.tokenizer import Tokenizer

DTYPES: dict[str, type[np.unsignedinteger]] = {"uint16": np.uint16, "uint32": np.uint32}

_worker_tokenizer: Tokenizer | None = None


def token_dtype(vocab_size: int, requested: str = "auto") -> np.dtype:
    """uint16 when every id fits, else uint32; an explicit dtype too small for the vocabulary is an error."""
    if requested == "auto":
        requested = "uint16" if vocab_size <= 2**16 else "uint32"
    if requested not in DTYPES:
        raise ValueError(f"dtype must be auto, uint16 or uint32, got {requested!r}")
    dtype = np.dtype(DTYPES[requested])
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise ValueError(f"a vocabulary of {vocab_size} ids does not fit in {requested} "
                         f"(largest id {np.iinfo(dtype).max})")
    return dtype


def _set_worker_tokenizer(tokenizer: Tokenizer) -> None:
    # Forked workers receive the object as is; spawned ones unpickle it.
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_chunk(job: tuple[str, int, int, str, str]) -> tuple[int, int]:
    """Worker: encode bytes [start, end) of the file into a raw part file; (tokens, bytes read)."""
    path, start, end, part_path, dtype = job
    tokens = 0
    assert _worker_tokenizer is not None  # set before any chunk is encoded
    with open(part_path, "wb") as part:
        for ids in _worker_tokenizer.encode_batches(iter_text(path, start=start, end=end)):
            np.asarray(ids, dtype=dtype).tofile(part)
            tokens += len(ids)
    return tokens, end - start


def _remove_stale_parts(output_path: Path) -> None:
    """Delete part directories left beside `output_path` by killed runs (their process is gone)."""
    for stale in output_path.parent.glob(f".{output_path.name}.parts-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
        except ValueError:
            continue  # not one of ours
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def tokenize_file(tokenizer_dir: str | os.PathLike, input_path: str | os.PathLike,
                  output_path: str | os.PathLike, workers: int | None = None, dtype: str = "auto",
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: bool = False) -> dict:
    """Encode `input_path` into `output_path` (.npy); returns counts and timing."""
    global _worker_tokenizer
    started = time.perf_counter()
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    np_dtype = token_dtype(max(tokenizer.vocab) + 1, dtype)
    path = check_input_file(input_path)
    workers = (os.cpu_count() or 1) if workers is None else workers
    size = path.stat().st_size
    chunks = parallel_chunks(path, tokenizer.special_tokens, chunk_bytes, workers)

    output_path = Path(output_path)
    _remove_stale_parts(output_path)
    parts_dir = output_path.parent / f".{output_path.name}.parts-{os.getpid()}"
    parts_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(path), start, end, str(parts_dir / f"{index:06d}.bin"), np_dtype.name)
            for index, (start, end) in enumerate(chunks)]
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="tokenize", disable=not progress, file=sys.stderr)
    pool = None
    try:
        if workers == 1 or len(jobs) == 1:
            _worker_tokenizer = tokenizer
            results: Iterator[tuple[int, int]] = map(_encode_chunk, jobs)
        else:
            pool = process_pool(min(workers, len(jobs)), _set_worker_tokenizer, (tokenizer,))
            results = pool.imap(_encode_chunk, jobs)
        counts = []
        with bar:
            for tokens, nbytes in results:
                counts.append(tokens)
                bar.update(nbytes)
        total = sum(counts)
        with atomic_path(output_path) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np_dtype, shape=(total,))
            offset = 0
            for (_, _, _, part_path, _), tokens in zip(jobs, counts):
                if tokens:  # copied page by page through the memory maps, never whole in RAM
                    array[offset:offset + tokens] = np.memmap(part_path, dtype=np_dtype, mode="r")
                offset += tokens
            array.flush()
            del array
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        _worker_tokenizer = None
        shutil.rmtree(parts_dir, ignore_errors=True)
    seconds = time.perf_counter() - started
    return {"input": str(path), "output": str(output_path), "bytes": size, "tokens": total,
            "dtype": np_dtype.name, "seconds": seconds, "bytes_per_token": size / total,
            "workers": workers, "chunks": len(jobs)}


# ---- tinylm tokenize -------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer-dir", required=True,
                        help="directory with vocab.json, merges.txt and special_tokens.json (from train-bpe)")
    parser.add_argument("--input", required=True, help="UTF-8 text file to encode (any size)")
    parser.add_argument("--output", required=True, help=".npy file of token ids to write")
    parser.add_argument("--workers", type=int, default=None, help="encoding processes (default: number of CPUs)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "uint16", "uint32"],
                        help="integer type of the ids; auto = uint16 when the vocabulary fits, else uint32")
    parser.add_argument("--chunk-mb", type=float, default=DEFAULT_CHUNK_BYTES / 2**20,
                        help="size of the file pieces handed to workers, in MiB (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def run(args: argparse.Namespace) -> int:
    result = tokenize_file(args.tokenizer_dir, args.input, args.output, workers=args.workers,
                           dtype=args.dtype, chunk_bytes=int(args.chunk_mb * 2**20),
                           progress=not args.no_progress)
    print(f"{result['tokens']:,} tokens ({result['dtype']}, {result['bytes_per_token']:.2f} bytes/token) "
          f"in {result['seconds']:.1f} s -> {result['output']}")
    return 0
