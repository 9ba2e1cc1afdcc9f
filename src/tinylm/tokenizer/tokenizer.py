"""`Tokenizer`: encode and decode with a byte-level BPE vocabulary, and its GPT-2 file formats.

Encoding cuts special tokens out first (longest first), splits the rest with the GPT-2 pattern,
and turns each pre-token into ids by applying merges in rank order (earliest learned first).
Natural text repeats the same words over and over, so ids are cached and most text is encoded by
looking them up. Two paths do this and give the same ids: the compiled one (`_encoder.c`: it cuts
out special tokens, pre-tokenizes, looks up and merges pre-tokens without making a Python object
per word) where it was built, else a Python one that caches the ids of each segment (a whitespace
run and the word after it, see `pretokenize.segment`) and of each pre-token, merged by `bpe`.

Files (GPT-2 formats, so GPT-2's own `encoder.json` + `vocab.bpe` load the same way):
- vocab.json: {token: id}, each token's bytes written in GPT-2's printable byte alphabet;
- merges.txt: `#version: 0.2`, then one `a b` merge a line in creation order;
- special_tokens.json: the list of special tokens (ours; optional when loading).
"""
from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import chain
from pathlib import Path
from typing import cast

from tinylm.files import file_error, read_json, read_text, write_json_atomic, write_text_atomic
from tinylm.tokenizer.pretokenize import (
    Piece,
    SpecialToken,
    Splitter,
    character_class,
    pretokenize,
    segment,
    validate_special_tokens,
)

try:  # built by setup.py where a C compiler is available
    from tinylm.tokenizer._encoder import Encoder as CompiledEncoder
except ImportError:
    CompiledEncoder = None

VOCAB_FILE, MERGES_FILE, SPECIAL_TOKENS_FILE = "vocab.json", "merges.txt", "special_tokens.json"

_CACHE_ENTRIES = 1 << 18  # per cache; bounded so that streaming a huge file keeps constant memory
_LONG_WORD = 64  # bytes; longer pre-tokens use the heap-based merge loop
_NO_MERGE = (1 << 62, -1)  # (rank, merged id) of a pair that no merge joins; it ranks last

MergeTable = dict[tuple[int, int], tuple[int, int]]  # (first id, second id) -> (rank, merged id)


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character (printable bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


BYTE_TO_CHAR = gpt2_bytes_to_unicode()
CHAR_TO_BYTE = {char: byte for byte, char in BYTE_TO_CHAR.items()}


def token_to_text(token: bytes) -> str:
    return "".join(BYTE_TO_CHAR[byte] for byte in token)


def text_to_token(text: str, what: str, path: str | os.PathLike) -> bytes:
    """The bytes of a token written in GPT-2's byte alphabet, read from file `path`."""
    try:
        return bytes(CHAR_TO_BYTE[char] for char in text)
    except KeyError as error:
        raise file_error(what, path, f"token {text!r} has a character outside GPT-2's byte alphabet: "
                                     f"{error.args[0]!r}") from None


def read_vocab(path: str | os.PathLike) -> dict[int, bytes]:
    """id -> token bytes from a GPT-2-format vocab.json ({token text: id})."""
    encoder = read_json(path, "tokenizer vocabulary", expect=dict)
    vocab = {}
    for text, token_id in encoder.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0 or token_id in vocab:
            raise file_error("tokenizer vocabulary", path, f"token {text!r} has a bad or repeated id {token_id!r}")
        vocab[token_id] = text_to_token(text, "tokenizer vocabulary", path)
    return vocab


def read_merges(path: str | os.PathLike) -> list[tuple[bytes, bytes]]:
    """The merges of a GPT-2-format merges.txt, in creation order."""
    merges = []
    for number, line in enumerate(read_text(path, "tokenizer merges").split("\n"), start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise file_error("tokenizer merges", path, f"line {number}: expected two tokens separated by a "
                                                       f"space, got {line!r}")
        merges.append((text_to_token(parts[0], "tokenizer merges", path),
                       text_to_token(parts[1], "tokenizer merges", path)))
    return merges


def longest_token(vocab: dict[int, bytes], special_ids: Iterable[int] = ()) -> bytes:
    """The longest learned token (special tokens aside); ties go to the greater bytes."""
    special_ids = set(special_ids)
    return max((token for token_id, token in vocab.items() if token_id not in special_ids),
               key=lambda token: (len(token), token))


def bpe(pretoken: str, byte_ids: list[int], merge_table: MergeTable) -> list[int]:
    """Ids of one pre-token: repeatedly merge the adjacent pair with the earliest merge.

    Merging its leftmost occurrence first is the same as merging all of them at once: a pair
    made by the merge only takes part in later merges."""
    word = [byte_ids[byte] for byte in pretoken.encode("utf-8")]
    if len(word) > _LONG_WORD:
        return bpe_long(word, merge_table)
    lookup = merge_table.get
    entries = [lookup(pair, _NO_MERGE) for pair in zip(word, word[1:])]  # entries[i]: word[i], word[i+1]
    while entries:
        best = min(entries)
        if best is _NO_MERGE:
            break
        i = entries.index(best)
        word[i] = best[1]
        del word[i + 1], entries[i]
        if i > 0:
            entries[i - 1] = lookup((word[i - 1], word[i]), _NO_MERGE)
        if i < len(entries):
            entries[i] = lookup((word[i], word[i + 1]), _NO_MERGE)
    return word


def bpe_long(word: list[int], merge_table: MergeTable) -> list[int]:
    """`bpe` in O(n log n) for long pre-tokens (say a run of 10,000 dashes).

    A heap holds (rank, position) of every mergeable adjacent pair; popping merges the earliest
    merge at its leftmost place first, which is what `bpe` does: a merge's result only takes
    part in later merges, so no pair created here can outrank the one being applied.
    """
    tokens: list[int | None] = list(word)
    after = list(range(1, len(word) + 1))  # next live position; len(word) = none
    before = list(range(-1, len(word) - 1))  # previous live position; -1 = none
    heap = [(merge_table[pair][0], i) for i, pair in enumerate(zip(word, word[1:])) if pair in merge_table]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = after[i]
        first = tokens[i]
        if first is None or j == len(word):
            continue
        second = tokens[j]
        assert second is not None  # after[i] is a live position
        entry = merge_table.get((first, second))
        if entry is None or entry[0] != rank:
            continue  # this pair has changed since it was pushed
        tokens[i], tokens[j] = entry[1], None
        after[i] = after[j]
        if after[j] < len(word):
            before[after[j]] = i
        for left, right in ((before[i], i), (i, after[i])):
            if left >= 0 and right < len(word):
                left_id, right_id = tokens[left], tokens[right]
                assert left_id is not None and right_id is not None  # both positions are live
                neighbour = merge_table.get((left_id, right_id))
                if neighbour is not None:
                    heapq.heappush(heap, (neighbour[0], left))
    return [token for token in tokens if token is not None]


def _encode_segment(pretoken_ids: _Memo, segment: str) -> list[int]:
    return list(chain.from_iterable(map(pretoken_ids.__getitem__, pretokenize(segment))))


class Tokenizer:
    """Byte-level BPE tokenizer: `vocab` id -> bytes, `merges` in creation order, special tokens."""

    def __init__(self, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
                 special_tokens: list[str] | None = None, *, compiled: bool = True):
        """`compiled=False` encodes with the Python path even where the compiled one is built."""
        self.vocab = dict(vocab)
        self.merges = list(merges)
        self.special_tokens = validate_special_tokens(special_tokens)

        # One id per role: several ids may hold the same bytes (say a special token "hello" and a
        # learned "hello"); each role takes the lowest id not taken by an earlier role.
        ids_by_bytes: dict[bytes, list[int]] = {}
        for token_id in sorted(self.vocab, reverse=True):
            ids_by_bytes.setdefault(self.vocab[token_id], []).append(token_id)

        def take(token: bytes) -> int | None:
            free = ids_by_bytes.get(token)
            return free.pop() if free else None

        byte_ids = [take(bytes([byte])) for byte in range(256)]
        if None in byte_ids:
            raise ValueError(f"vocabulary lacks the single byte {byte_ids.index(None)}")
        self.byte_ids = cast(list[int], byte_ids)  # none is None (above)
        self.special_ids: dict[str, int] = {}
        for token in self.special_tokens:
            special_id = take(token.encode("utf-8"))
            if special_id is None:  # a special token new to this vocabulary gets the next id
                special_id = max(self.vocab, default=-1) + 1
                self.vocab[special_id] = token.encode("utf-8")
            self.special_ids[token] = special_id
        self.merge_table: MergeTable = {}
        learned = {bytes([byte]): token_id for byte, token_id in enumerate(self.byte_ids)}
        for rank, (first, second) in enumerate(self.merges):
            if first not in learned or second not in learned:
                raise ValueError(f"merge {rank} ({first!r}, {second!r}) uses a token not made by an "
                                 "earlier merge")
            merged_id = learned.get(first + second)
            if merged_id is None:
                merged_id = take(first + second)
                if merged_id is None:
                    raise ValueError(f"merge {rank} ({first!r}, {second!r}) makes a token missing "
                                     "from the vocabulary")
                learned[first + second] = merged_id
            self.merge_table.setdefault((learned[first], learned[second]), (rank, merged_id))

        # The caches and the compiled encoder get functions of the merge table, never bound methods
        # of the Tokenizer: a reference back would make a cycle, and a dropped Tokenizer would then
        # wait for the garbage collector (the compiled encoder alone holds megabytes).
        self._bpe = partial(bpe, byte_ids=self.byte_ids, merge_table=self.merge_table)
        self._splitter = Splitter(self.special_tokens)
        self._pretoken_ids = _Memo(self._bpe)
        self._segment_ids = _Memo(partial(_encode_segment, self._pretoken_ids))
        self._compiled = (CompiledEncoder(self.merge_table, self.byte_ids, self._bpe, _LONG_WORD,
                                          character_class, _CACHE_ENTRIES, self.special_ids)
                          if compiled and CompiledEncoder is not None else None)

    # ---- files -------------------------------------------------------------------------------

    @classmethod
    def from_files(cls, vocab_filepath: str | os.PathLike, merges_filepath: str | os.PathLike,
                   special_tokens: list[str] | None = None) -> Tokenizer:
        """Load GPT-2-format `vocab.json` and `merges.txt` (ours or GPT-2's `encoder.json`/`vocab.bpe`)."""
        special_tokens = validate_special_tokens(special_tokens)
        vocab, merges = read_vocab(vocab_filepath), read_merges(merges_filepath)
        try:
            return cls(vocab, merges, special_tokens)
        except ValueError as error:
            raise ValueError(f"tokenizer files {os.fspath(vocab_filepath)!r}, {os.fspath(merges_filepath)!r}: "
                             f"{error}") from None

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> Tokenizer:
        """Load a tokenizer saved by `save` (or `tinylm train-bpe`)."""
        directory = Path(directory)
        special_path = directory / SPECIAL_TOKENS_FILE
        special_tokens = []
        if special_path.exists():
            special_tokens = read_json(special_path, "tokenizer special tokens", expect=list)
            try:
                validate_special_tokens(special_tokens)
            except ValueError as error:
                raise file_error("tokenizer special tokens", special_path, str(error)) from None
        return cls.from_files(directory / VOCAB_FILE, directory / MERGES_FILE, special_tokens)

    def save(self, directory: str | os.PathLike) -> None:
        """Write vocab.json, merges.txt and special_tokens.json into `directory`."""
        encoder: dict[str, int] = {}
        for token_id in sorted(self.vocab):
            text = token_to_text(self.vocab[token_id])
            if text in encoder:
                raise ValueError(f"ids {encoder[text]} and {token_id} hold the same bytes "
                                 f"{self.vocab[token_id]!r}; vocab.json cannot store both")
            encoder[text] = token_id
        directory = Path(directory)
        write_json_atomic(directory / VOCAB_FILE, encoder)
        merge_lines = [f"{token_to_text(a)} {token_to_text(b)}\n" for a, b in self.merges]
        write_text_atomic(directory / MERGES_FILE, "#version: 0.2\n" + "".join(merge_lines))
        write_json_atomic(directory / SPECIAL_TOKENS_FILE, self.special_tokens)

    # ---- encoding ----------------------------------------------------------------------------

    def _encode_pieces(self, pieces: list[Piece]) -> list[int]:
        ids: list[int] = []
        for piece in pieces:
            if isinstance(piece, SpecialToken):
                ids.append(self.special_ids[piece])
            elif self._compiled is not None:
                ids += self._compiled.encode(piece)
            else:
                if len(self._segment_ids) > _CACHE_ENTRIES or len(self._pretoken_ids) > _CACHE_ENTRIES:
                    self.clear_cache()
                ids.extend(chain.from_iterable(map(self._segment_ids.__getitem__, segment(piece))))
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens become their single id."""
        if self._compiled is not None:  # cuts at special tokens too: one call, one list
            return self._compiled.encode(text)
        return self._encode_pieces(self._splitter.split(text)[0])

    def encode_batches(self, iterable: Iterable[str]) -> Iterator[list[int]]:
        """Encode a stream of text pieces as if it were one string, a list of ids at a time."""
        for pieces in self._splitter.stream(iterable):
            yield self._encode_pieces(pieces)

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily encode a stream of text pieces (say, a file's lines) as if it were one string."""
        return chain.from_iterable(self.encode_batches(iterable))

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD."""
        try:
            data = b"".join([self.vocab[token_id] for token_id in ids])
        except (KeyError, TypeError):
            bad = next(i for i, token_id in enumerate(ids)
                       if not isinstance(token_id, int) or token_id not in self.vocab)
            raise ValueError(f"token id {ids[bad]!r} at position {bad} is not in the vocabulary "
                             f"(size {len(self.vocab)})") from None
        return data.decode("utf-8", errors="replace")

    def clear_cache(self) -> None:
        """Forget the cached segment and pre-token encodings (to time encoding of unseen text, or
        free memory)."""
        self._segment_ids.clear()
        self._pretoken_ids.clear()
        if self._compiled is not None:
            self._compiled.clear()

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def compiled(self) -> bool:
        """Whether encoding runs the compiled encoder (else the Python path: same ids, slower)."""
        return self._compiled is not None

    def __reduce__(self):
        # Pickled as its definition (spawned worker processes receive it so): the caches stay
        # behind, and the compiled encoder cannot be pickled anyway.
        return _rebuild_tokenizer, (self.vocab, self.merges, self.special_tokens, self.compiled)


def _rebuild_tokenizer(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: list[str],
                       compiled: bool) -> Tokenizer:
    return Tokenizer(vocab, merges, special_tokens, compiled=compiled)


class _Memo(dict):
    """A dict that computes, stores and returns the value of a missing key. Lookups of keys already
    there stay in C, which matters when looking up every segment of a file."""

    def __init__(self, compute: Callable[[str], list[int]]):
        super().__init__()
        self.compute = compute

    def __missing__(self, key: str) -> list[int]:
        value = self[key] = self.compute(key)
        return value
