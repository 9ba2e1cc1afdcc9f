"""Pre-tokenization: special tokens, the GPT-2 split pattern, and reading big files in chunks.

Text is first cut at special tokens (longest first), then each piece between them is split by the
GPT-2 pattern into pre-tokens; BPE never merges across either cut. Training (and the pure-Python
encoder) cut that text into segments first (`segment`), which pre-tokenize independently and repeat
in natural text, so that each distinct segment is pre-tokenized once. Large files are processed as
chunks whose boundaries sit at special tokens, so every chunk pre-tokenizes exactly as it would
inside the whole file, and chunks can go to separate worker processes. Each chunk is read as a
stream of blocks (`Splitter.stream`), so memory stays bounded even inside a huge chunk.
"""
from __future__ import annotations

import codecs
import multiprocessing
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The same splits, found faster: possessive runs never backtrack, and the whitespace cases are
# spelled out (a run at the end of the text; all but the last space of a run before a non-space;
# else one character). tests/tokenizer/test_tokenizer.py checks both patterns agree on arbitrary text.
GPT2_FAST_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_REGEX = regex.compile(GPT2_FAST_PATTERN)
# On pure-ASCII text the pattern's classes are plain ranges (letters A-Za-z, numbers 0-9, and the
# same six whitespace characters), and the standard `re` engine splits about twice as fast.
ASCII_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
ASCII_REGEX = re.compile(ASCII_PATTERN, re.ASCII)


def pretokenize(text: str) -> list[str]:
    """The GPT-2 pre-tokens of `text` (which holds no special tokens)."""
    return ASCII_REGEX.findall(text) if text.isascii() else GPT2_REGEX.findall(text)


# No alternative of the GPT-2 pattern matches a non-space character followed by whitespace, and the
# pattern only looks ahead, so cutting text where a non-space character meets whitespace changes no
# pre-token. A segment is a run of whitespace and the run of non-space after it (" the",
# "\n\nOnce,"), or trailing whitespace; its pre-tokens are the same alone as in context. Segments
# are quicker to find than pre-tokens (a simpler pattern, fewer matches), and the `\s` here is
# each engine's `\s` in the pattern above.
SEGMENT_PATTERN = r"\s*\S+|\s+"
SEGMENT_REGEX = regex.compile(SEGMENT_PATTERN)
ASCII_SEGMENT_REGEX = re.compile(SEGMENT_PATTERN, re.ASCII)


def segment(text: str) -> list[str]:
    """`text` (which holds no special tokens) cut where a non-space character meets whitespace."""
    return ASCII_SEGMENT_REGEX.findall(text) if text.isascii() else SEGMENT_REGEX.findall(text)


def validate_special_tokens(special_tokens: list[str] | None) -> list[str]:
    """The special tokens as a list; empty or repeated ones raise ValueError."""
    special_tokens = list(special_tokens or [])
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
    repeated = sorted({t for t in special_tokens if special_tokens.count(t) > 1})
    if repeated:
        raise ValueError(f"duplicate special token(s): {', '.join(map(repr, repeated))}")
    return special_tokens


def special_token_regex(special_tokens: list[str]) -> re.Pattern | None:
    """A pattern matching any special token, the longest first where several start at one place."""
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=len, reverse=True)
    return re.compile("|".join(re.escape(token) for token in ordered))


# Character classes of the GPT-2 pattern, as the `regex` module sees them; the compiled scanner
# (tokenizer/_encoder.c) asks for each code point it meets, so both scanners agree on every one.
WHITESPACE, LETTER, NUMBER, OTHER = 1, 2, 3, 4
_CLASS_REGEXES = ((WHITESPACE, regex.compile(r"\s")), (LETTER, regex.compile(r"\p{L}")),
                  (NUMBER, regex.compile(r"\p{N}")))


def character_class(code_point: int) -> int:
    """WHITESPACE, LETTER, NUMBER or OTHER: the class of a character in the GPT-2 pattern."""
    character = chr(code_point)
    return next((cls for cls, pattern in _CLASS_REGEXES if pattern.match(character)), OTHER)


# The last place in a stretch of text where a non-space character meets whitespace (see above),
# searched for from the end.
_LAST_CUT_REGEX = regex.compile(r"\S(?=\s)", flags=regex.REVERSE)
STREAM_BLOCK_CHARS = 1 << 16


class SpecialToken(str):
    """A special token found in the text; ordinary text stays a plain `str`."""


Piece = str | SpecialToken


class Splitter:
    """Cuts text into special tokens and stretches of ordinary text, also when it arrives in pieces.

    A stretch of ordinary text ends at a special token, at the end of the input, or, in a stream,
    where a non-space character meets whitespace: the text after such a cut can never change its
    pre-tokens."""

    def __init__(self, special_tokens: list[str]):
        self.special_regex = special_token_regex(special_tokens)
        self.longest_special = max((len(token) for token in special_tokens), default=0)

    def split(self, text: str, final: bool = True) -> tuple[list[Piece], int]:
        """(pieces, characters used) for the start of `text` that no following text can change.

        With `final`, `text` is the end of the input and is used whole."""
        pieces: list[Piece] = []
        position = 0
        certain = len(text) if final else len(text) - self.longest_special
        if self.special_regex is not None:
            for match in self.special_regex.finditer(text):
                if match.start() > certain:
                    break  # a longer special token might still begin here
                if match.start() > position:
                    pieces.append(text[position:match.start()])
                pieces.append(SpecialToken(match.group()))
                position = match.end()
        end = len(text)
        if not final:  # keep the text up to the last cut that the following text cannot move
            cut = _LAST_CUT_REGEX.search(text, position, min(certain + 1, len(text)))
            end = cut.end() if cut else position
        if end > position:
            pieces.append(text[position:end])
        return pieces, end

    def stream(self, texts: Iterable[str]) -> Iterator[list[Piece]]:
        """Split a stream of text pieces as if they were one string, in bounded memory."""
        parts: list[str] = []
        size, block = 0, STREAM_BLOCK_CHARS
        for text in texts:
            parts.append(text)
            size += len(text)
            if size >= block:
                joined = "".join(parts)
                pieces, used = self.split(joined, final=False)
                yield pieces
                parts, size = [joined[used:]], len(joined) - used
                block = max(STREAM_BLOCK_CHARS, 2 * size)  # a long unsplittable run: wait for more
        yield self.split("".join(parts), final=True)[0]


def count_segments(pieces: list[Piece], counts: Counter[str]) -> None:
    """Add the segments of the ordinary text among `pieces` to `counts`."""
    for piece in pieces:
        if not isinstance(piece, SpecialToken):
            counts.update(segment(piece))


def pretoken_counts(segment_counts: Counter[str]) -> Counter[str]:
    """The pre-token counts of text whose segments have the counts `segment_counts`."""
    counts: Counter[str] = Counter()
    for text, count in segment_counts.items():
        for pretoken in pretokenize(text):
            counts[pretoken] += count
    return counts


# ---- files -----------------------------------------------------------------------------------

DEFAULT_CHUNK_BYTES = 4 * 2**20  # the work unit handed to one worker process at a time
_SCAN_BYTES = 2**20              # how much is read at a time while looking for a chunk boundary


def check_input_file(path: str | os.PathLike) -> Path:
    """The path of a readable, non-empty file, or FileNotFoundError/ValueError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    if not path.is_file():
        raise ValueError(f"input is not a regular file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"input file is empty: {path}")
    return path


def iter_text(path: str | os.PathLike, block_bytes: int = 2**20, start: int = 0,
              end: int | None = None) -> Iterator[str]:
    """Stream bytes [start, end) of a UTF-8 file as text blocks in constant memory; invalid
    UTF-8 names its file offset. `start` and `end` must fall between characters."""
    decode = codecs.getincrementaldecoder("utf-8")()
    offset = start  # file offset of the first byte not yet handed to the decoder
    with open(path, "rb") as file:
        file.seek(start)
        while True:
            data = file.read(block_bytes if end is None else min(block_bytes, end - offset))
            pending = len(decode.getstate()[0])  # bytes of a split character kept from last block
            try:
                text = decode.decode(data, final=not data)
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}: not valid UTF-8 at byte offset {offset - pending + error.start} "
                                 f"({error.reason})") from None
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def _occurrences(data: bytes, needles: list[bytes]) -> list[tuple[int, int]]:
    """(start, end) of every occurrence of every needle in `data`, overlapping ones included."""
    found = []
    for needle in needles:
        start = data.find(needle)
        while start != -1:
            found.append((start, start + len(needle)))
            start = data.find(needle, start + 1)
    return found


def next_boundary(file, position: int, size: int, special_bytes: list[bytes]) -> int:
    """First offset >= `position` where the whole-file scan for special tokens starts a match.

    That holds where some special token begins and no other occurrence began earlier and runs
    past this point: the leftmost-longest scan then necessarily stops here. Returns `size` if
    there is no such offset. Offsets are UTF-8 character boundaries (a token starts with a lead byte).
    """
    longest = max(len(token) for token in special_bytes)
    while position < size:
        window_start = max(0, position - longest)
        file.seek(window_start)
        data = file.read(_SCAN_BYTES + 2 * longest)
        at_eof = window_start + len(data) >= size
        # A candidate must leave room after it to see every occurrence that could cover it.
        last = window_start + len(data) - (0 if at_eof else longest)
        occurrences = [(window_start + s, window_start + e) for s, e in _occurrences(data, special_bytes)]
        for start in sorted({s for s, _ in occurrences if position <= s < last}):
            if not any(s < start < e for s, e in occurrences):
                return start
        if at_eof:
            return size
        position = max(position, last)
    return size


def chunk_boundaries(path: str | os.PathLike, special_tokens: list[str],
                     chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list[tuple[int, int]]:
    """Split a file into (start, end) byte ranges of about `chunk_bytes`, cut at special tokens.

    Without special tokens there is no safe cut for the GPT-2 pattern, so the file is one chunk.
    """
    size = os.path.getsize(path)
    if not special_tokens or size <= chunk_bytes:
        return [(0, size)] if size else []
    special_bytes = [token.encode("utf-8") for token in special_tokens]
    cuts = [0]
    with open(path, "rb") as file:
        while cuts[-1] < size:
            cut = next_boundary(file, cuts[-1] + chunk_bytes, size, special_bytes)
            cuts.append(cut)
    return list(zip(cuts[:-1], cuts[1:]))


def parallel_chunks(path: str | os.PathLike, special_tokens: list[str], chunk_bytes: int,
                    workers: int) -> list[tuple[int, int]]:
    """Chunks of at most about `chunk_bytes`, and at least one per worker where the file allows."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk size must be positive, got {chunk_bytes} bytes")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    size = os.path.getsize(path)
    return chunk_boundaries(path, special_tokens, min(chunk_bytes, -(-size // workers)))


def process_pool(workers: int, initializer=None, initargs: tuple = ()) -> multiprocessing.pool.Pool:
    # fork starts workers in milliseconds; elsewhere (macOS, Windows) spawn is the safe default.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method).Pool(workers, initializer=initializer, initargs=initargs)
