"""Byte-level BPE training (`train_bpe`) and the `tinylm train-bpe` command.

1. Pre-token counts: the file is cut into chunks at special tokens; worker processes count the
   GPT-2 pre-tokens of each chunk, reading only their own chunk, and the counts are summed. Memory
   therefore holds the counts, not the text.
2. Merges: every pre-token is a list of token ids with a count. Pair counts are kept up to date
   incrementally (a merge touches only the words holding the merged pair, found through an index
   pair -> words), and the most frequent pair comes from a heap with lazy invalidation.
   Ties go to the lexicographically greater pair of byte strings. `learn_merges` is that loop in
   Python; `_trainer.c` is the same loop compiled (benchmarks/results/tokenizer.md times both), used where
   it was built.
"""
from __future__ import annotations

import argparse
import heapq
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from tinylm.files import write_json_atomic
from tinylm.tokenizer.pretokenize import (
    DEFAULT_CHUNK_BYTES,
    Splitter,
    check_input_file,
    count_segments,
    iter_text,
    parallel_chunks,
    pretoken_counts,
    process_pool,
    validate_special_tokens,
)
from tinylm.tokenizer.tokenizer import Tokenizer, longest_token
from tinylm.training.memory import peak_rss_bytes

try:  # built by setup.py where a C compiler is available
    from tinylm.tokenizer._trainer import learn_merges as compiled_learn_merges
except ImportError:
    compiled_learn_merges = None

Pair = tuple[int, int]
PROGRESS_EVERY = 256  # merges between progress reports


def _count_chunk(job: tuple[str, int, int, list[str]]) -> tuple[Counter[str], int, int]:
    """Worker: (pre-token counts, bytes read, peak RSS) of one chunk of the file."""
    path, start, end, special_tokens = job
    segment_counts: Counter[str] = Counter()
    for pieces in Splitter(special_tokens).stream(iter_text(path, start=start, end=end)):
        count_segments(pieces, segment_counts)
    return pretoken_counts(segment_counts), end - start, peak_rss_bytes()


def count_file_pretokens(path: str | os.PathLike, special_tokens: list[str], workers: int = 1,
                         chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: bool = False,
                         ) -> tuple[Counter[str], int]:
    """Pre-token counts of a whole file, and an upper bound of the workers' summed peak RSS.

    The bound is (number of workers) x (largest worker high-water mark); 0 when counting in-process.
    """
    chunks = parallel_chunks(path, special_tokens, chunk_bytes, workers)
    jobs = [(str(path), start, end, special_tokens) for start, end in chunks]
    total: Counter[str] = Counter()
    worker_peak = 0
    bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="pre-tokenize",
               disable=not progress, file=sys.stderr)
    with bar:
        if workers <= 1 or len(jobs) <= 1:
            results: Iterator[tuple[Counter[str], int, int]] = map(_count_chunk, jobs)
            pool, pool_size = None, 0
        else:
            pool_size = min(workers, len(jobs))
            pool = process_pool(pool_size)
            results = pool.imap_unordered(_count_chunk, jobs)
        try:
            for counts, nbytes, peak in results:
                total.update(counts)
                bar.update(nbytes)
                if pool is not None:
                    worker_peak = max(worker_peak, peak)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    return total, pool_size * worker_peak


def _merge_word(word: list[int], a: int, b: int, new_id: int) -> tuple[list[int], list[int], list[int]]:
    """Replace every (a, b) in `word` by `new_id`, left to right.

    Returns (new word, indices of the old pairs that vanished, indices of the new pairs that
    appeared); pair index j is the pair (word[j], word[j + 1]). Pairs away from a merge are untouched.
    """
    merged: list[int] = []
    vanished: list[int] = []
    appeared: list[int] = []
    n, start, i = len(word), 0, 0
    while True:
        try:
            i = word.index(a, i)  # scans in C: words are mostly left alone
        except ValueError:
            break
        if i + 1 >= n:
            break
        if word[i + 1] != b:
            i += 1
            continue
        merged.extend(word[start:i])
        for j in (i - 1, i, i + 1):
            if 0 <= j < n - 1 and not (vanished and vanished[-1] >= j):
                vanished.append(j)
        k = len(merged)
        if k and not (appeared and appeared[-1] == k - 1):
            appeared.append(k - 1)
        appeared.append(k)
        merged.append(new_id)
        i = start = i + 2
    merged.extend(word[start:])
    if appeared and appeared[-1] == len(merged) - 1:
        appeared.pop()  # the merge ended the word: no pair to its right
    return merged, vanished, appeared


def _descending(token: bytes) -> tuple[int, ...]:
    """A key that sorts byte strings in reverse lexicographic order (for the min-heap ties)."""
    return tuple(255 - byte for byte in token) + (256,)


def learn_merges(words: list[bytes], counts: list[int], tokens: list[bytes], num_merges: int,
                 progress: Callable[[int], object] | None = None) -> list[Pair]:
    """Up to `num_merges` merges, as id pairs, learned from distinct pre-tokens and their counts.

    `words` are pre-tokens longer than one byte; `tokens[i]` are the bytes of the ids already in
    the vocabulary (byte b is id b), and merge k makes id len(tokens) + k. `progress(n)` hears
    every PROGRESS_EVERY merges how many are done. `_trainer.learn_merges` is the same, compiled.
    """
    tokens = list(tokens)
    word_ids = [list(word) for word in words]  # byte b is id b
    pair_counts: Counter[Pair] = Counter()
    pair_words: dict[Pair, set[int]] = {}
    for index, (word, count) in enumerate(zip(word_ids, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            pair_words.setdefault(pair, set()).add(index)

    keys = [_descending(token) for token in tokens]
    # Heap entries (-count, key(a), key(b), a, b): most frequent first, then greatest bytes. An
    # entry is stale once its count no longer equals pair_counts[pair]; stale entries are skipped.
    heap = [(-count, keys[a], keys[b], a, b) for (a, b), count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[Pair] = []
    for step in range(1, num_merges + 1):
        while heap and pair_counts.get((heap[0][3], heap[0][4])) != -heap[0][0]:
            heapq.heappop(heap)
        if not heap:
            break  # the corpus has no pairs left
        _, _, _, a, b = heapq.heappop(heap)
        new_id = len(tokens)
        tokens.append(tokens[a] + tokens[b])
        keys.append(_descending(tokens[new_id]))
        merges.append((a, b))

        changed: set[Pair] = set()
        # pair_words may list words that no longer hold the pair (entries are only ever added);
        # merging such a word finds nothing to do.
        for index in pair_words.pop((a, b)):
            old, count = word_ids[index], counts[index]
            new, vanished, appeared = _merge_word(old, a, b, new_id)
            for j in vanished:
                pair = (old[j], old[j + 1])
                pair_counts[pair] -= count
                changed.add(pair)
            for j in appeared:
                pair = (new[j], new[j + 1])
                pair_counts[pair] += count
                pair_words.setdefault(pair, set()).add(index)
                changed.add(pair)
            word_ids[index] = new
        for pair in changed:
            count = pair_counts[pair]
            if count > 0:
                heapq.heappush(heap, (-count, keys[pair[0]], keys[pair[1]], pair[0], pair[1]))
            else:
                del pair_counts[pair]
                pair_words.pop(pair, None)
        if progress is not None and (step % PROGRESS_EVERY == 0 or step == num_merges):
            progress(step)
    return merges


def bpe_merges(word_counts: dict[bytes, int], vocab: dict[int, bytes], num_merges: int,
               progress: bool = False, compiled: bool = True) -> list[tuple[bytes, bytes]]:
    """Learn up to `num_merges` merges from pre-token counts; new tokens are added to `vocab`,
    whose ids run from 0 with byte b at id b (see `initial_vocab`). `compiled=False` uses the
    Python loop even where the compiled one is built."""
    learn = compiled_learn_merges if compiled and compiled_learn_merges is not None else learn_merges
    words = [word for word in word_counts if len(word) > 1]  # a single byte has no pair to merge
    with tqdm(total=num_merges, desc="merges", disable=not progress, file=sys.stderr) as bar:
        def report(done: int) -> None:
            bar.update(done - bar.n)

        pairs = learn(words, [word_counts[word] for word in words], [vocab[i] for i in range(len(vocab))],
                      num_merges, report)
    merges = []
    for a, b in pairs:
        merges.append((vocab[a], vocab[b]))
        vocab[len(vocab)] = vocab[a] + vocab[b]
    return merges


def initial_vocab(special_tokens: list[str]) -> dict[int, bytes]:
    """Ids 0-255 are the single bytes, then the special tokens in the order given."""
    vocab = {byte: bytes([byte]) for byte in range(256)}
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    return vocab


def validate_vocab_size(vocab_size: int, special_tokens: list[str]) -> None:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise ValueError(f"vocab_size must be an integer, got {vocab_size!r}")
    smallest = 256 + len(special_tokens)
    if vocab_size < smallest:
        raise ValueError(f"vocab_size {vocab_size} is smaller than 256 bytes + {len(special_tokens)} "
                         f"special token(s) = {smallest}")


def train_bpe(input_path: str | os.PathLike, vocab_size: int, special_tokens: list[str],
              workers: int | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
              progress: bool = False, stats: dict | None = None, compiled: bool = True,
              ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on a UTF-8 text file.

    Returns (vocab id -> bytes, merges in creation order). `workers` pre-tokenize in parallel
    (default: all CPUs; the result does not depend on it). If `stats` is a dict it receives the
    training time, peak memory and sizes. `compiled=False` learns merges with the Python loop even
    where the compiled one is built (the result is the same).
    """
    started = time.perf_counter()
    special_tokens = validate_special_tokens(special_tokens)
    validate_vocab_size(vocab_size, special_tokens)
    path = check_input_file(input_path)
    workers = (os.cpu_count() or 1) if workers is None else workers
    text_counts, workers_peak = count_file_pretokens(path, special_tokens, workers, chunk_bytes, progress)
    word_counts = {token.encode("utf-8"): count for token, count in text_counts.items()}
    del text_counts
    vocab = initial_vocab(special_tokens)
    merges = bpe_merges(word_counts, vocab, vocab_size - len(vocab), progress, compiled)

    if stats is not None:
        longest = longest_token(vocab, range(256, 256 + len(special_tokens)))
        stats.update({
            "input": str(path),
            "input_bytes": path.stat().st_size,
            "training_time_s": time.perf_counter() - started,
            # Upper bound: this process's high-water mark (since it started: exact for the CLI)
            # plus every concurrent worker at its own peak.
            "peak_memory_bytes": peak_rss_bytes() + workers_peak,
            "vocab_size": len(vocab),
            "num_merges": len(merges),
            "special_tokens": special_tokens,
            "longest_token": longest.decode("utf-8", errors="replace"),
            "longest_token_bytes": len(longest),
            "workers": workers,
            "unique_pretokens": len(word_counts),
            "compiled_merge_loop": compiled and compiled_learn_merges is not None,
        })
    return vocab, merges


# ---- tinylm train-bpe ------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="UTF-8 training text file (any size; read in chunks)")
    parser.add_argument("--vocab-size", type=int, required=True,
                        help="final vocabulary size: 256 bytes + special tokens + merges")
    parser.add_argument("--special-token", action="append", default=[], dest="special_tokens",
                        metavar="TOKEN", help="special token, never merged (repeat for several); "
                        "chunks of the file are cut at these")
    parser.add_argument("--out-dir", required=True,
                        help="writes vocab.json, merges.txt (GPT-2 formats), special_tokens.json, stats.json")
    parser.add_argument("--workers", type=int, default=None,
                        help="pre-tokenization processes (default: number of CPUs); the result does not depend on it")
    parser.add_argument("--chunk-mb", type=float, default=DEFAULT_CHUNK_BYTES / 2**20,
                        help="size of the file pieces handed to workers, in MiB (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def run(args: argparse.Namespace) -> int:
    stats: dict = {}
    vocab, merges = train_bpe(args.input, args.vocab_size, args.special_tokens, workers=args.workers,
                              chunk_bytes=int(args.chunk_mb * 2**20), progress=not args.no_progress,
                              stats=stats)
    out_dir = Path(args.out_dir)
    Tokenizer(vocab, merges, args.special_tokens).save(out_dir)
    write_json_atomic(out_dir / "stats.json", stats)
    print(f"trained in {stats['training_time_s']:.2f} s, peak memory {stats['peak_memory_bytes'] / 2**20:.0f} MiB, "
          f"vocabulary {stats['vocab_size']} ({stats['num_merges']} merges), "
          f"longest token {stats['longest_token']!r} ({stats['longest_token_bytes']} bytes) -> {out_dir}")
    return 0
