"""BPE training: merges equal a naive reference trainer; chunking and worker count change nothing."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm.cli import main
from tinylm.tokenizer import train_bpe
from tinylm.tokenizer.pretokenize import chunk_boundaries, iter_text
from tinylm.tokenizer.training import compiled_learn_merges, count_file_pretokens, learn_merges

# Written out here rather than imported, so the reference does not share the implementation's.
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


def reference_pretokens(text: str, special_tokens: list[str]) -> list[str]:
    pieces = [text]
    if special_tokens:
        alternatives = "|".join(regex.escape(t) for t in sorted(special_tokens, key=len, reverse=True))
        pieces = regex.split(alternatives, text)
    return [token for piece in pieces for token in regex.findall(PATTERN, piece)]


def reference_train(text: str, vocab_size: int, special_tokens: list[str]):
    """The obvious BPE: count every pair of every word each step, merge the best one everywhere."""
    words = Counter(tuple(bytes([b]) for b in token.encode("utf-8"))
                    for token in reference_pretokens(text, special_tokens))
    vocab = [bytes([i]) for i in range(256)] + [t.encode("utf-8") for t in special_tokens]
    merges = []
    while len(vocab) < vocab_size:
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        vocab.append(best[0] + best[1])
        merged_words = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += count
        words = merged_words
    return vocab, merges


def write(tmp_path: Path, text: str, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


CORPORA = {
    "sennrich": ("low low low low low lower lower widest widest widest newest newest newest newest "
                 "newest newest", []),
    "ties": ("ab ab cd cd ef ef gh gh ba ba dc dc zz zz yy yy aa bb cc dd", []),
    "unicode": ("héllo wörld héllo naïve café café 日本語 日本語 日本 😀😀 😀 👍🏽👍🏽 ﷽ ﷽ Ünïcödé "
                "e\u0301 e\u0301 \u200b\u200b x", []),
    "specials": (f"the cat{EOT}the cat sat{EOT}{EOT}on the mat<|pad|>the{EOT}<|pad|> cat", [EOT, "<|pad|>"]),
    "overlapping specials": (f"a{EOT}{EOT}{EOT}b{EOT}aa{EOT}{EOT}c", [EOT, EOT + EOT]),
    "whitespace and code": ("def f(x):\n    return x  \n\n\n  if x == 1:\t\tpass\r\n   \n"
                            "it's we'll they've I'm don't 123 4567 3.14 ---- ...", []),
}


COMPILED = pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])


@COMPILED
@pytest.mark.parametrize("name", CORPORA)
@pytest.mark.parametrize("vocab_extra", [20, 120])
def test_merges_equal_reference(tmp_path, name, vocab_extra, compiled):
    text, special_tokens = CORPORA[name]
    vocab_size = 256 + len(special_tokens) + vocab_extra
    vocab, merges = train_bpe(write(tmp_path, text), vocab_size, special_tokens, workers=1, compiled=compiled)
    ref_vocab, ref_merges = reference_train(text, vocab_size, special_tokens)
    assert merges == ref_merges
    assert sorted(vocab) == list(range(len(ref_vocab)))
    assert [vocab[i] for i in range(len(vocab))] == ref_vocab


@COMPILED
@settings(max_examples=40, deadline=None)
@given(text=st.lists(st.sampled_from(list("ab c\n'sé日😀1") + [EOT]), max_size=200).map("".join))
def test_merges_equal_reference_on_random_text(tmp_path_factory, text, compiled):
    if not text:
        return
    path = write(tmp_path_factory.mktemp("bpe"), text)
    _, merges = train_bpe(path, 256 + 1 + 30, [EOT], workers=1, chunk_bytes=16, compiled=compiled)
    assert merges == reference_train(text, 256 + 1 + 30, [EOT])[1]


@COMPILED
def test_merges_equal_reference_on_real_text(tmp_path, sample_data, compiled):
    text = (sample_data / "owt" / "train.txt").read_bytes()[:60_000].decode("utf-8", errors="ignore")
    path = write(tmp_path, text)
    _, merges = train_bpe(path, 256 + 1 + 150, [EOT], workers=2, chunk_bytes=8_000, compiled=compiled)
    assert merges == reference_train(text, 256 + 1 + 150, [EOT])[1]


def test_special_tokens_are_never_merged_and_vocab_is_exact_size(tmp_path):
    text = f"x{EOT}x{EOT}x{EOT}" * 50
    vocab, merges = train_bpe(write(tmp_path, text), 300, [EOT])
    assert vocab[256] == EOT.encode()
    assert all(EOT.encode() not in a + b for a, b in merges)
    # Only "x" is left between the specials: no pair at all, so training stops early.
    assert merges == [] and len(vocab) == 257


def test_chunks_start_where_the_whole_file_scan_matches_a_special(tmp_path):
    # "<|endoftext|><|endoftext|>" is one special; a cut between its halves would split it.
    text = ("word " * 7 + EOT * 3 + "tail ") * 40
    path = write(tmp_path, text)
    specials = [EOT, EOT + EOT]
    for chunk_bytes in (1, 7, 30, 100, 1000):
        chunks = chunk_boundaries(path, specials, chunk_bytes)
        assert chunks[0][0] == 0 and chunks[-1][1] == len(text.encode())
        assert all(end == start for (_, end), (start, _) in zip(chunks, chunks[1:]))
        expected = Counter(reference_pretokens(text, specials))
        counted = Counter()
        for start, end in chunks:
            chunk = "".join(iter_text(path, block_bytes=5, start=start, end=end))
            counted.update(reference_pretokens(chunk, specials))
            if start:
                assert chunk.startswith(EOT)
        assert counted == expected


@pytest.mark.parametrize("chunk_bytes", [50, 4096])
def test_result_does_not_depend_on_workers_or_chunks(tmp_path, sample_data, chunk_bytes):
    text = (sample_data / "tinystories" / "train.txt").read_text(encoding="utf-8")[:200_000]
    path = write(tmp_path, text)
    results = [train_bpe(path, 700, [EOT], workers=w, chunk_bytes=c)
               for w, c in ((1, 10**9), (2, chunk_bytes), (3, chunk_bytes))]
    assert results[0] == results[1] == results[2]
    counts = [count_file_pretokens(path, [EOT], w, chunk_bytes)[0] for w in (1, 2)]
    assert counts[0] == counts[1] == Counter(reference_pretokens(text, [EOT]))


def test_training_is_deterministic_and_stats_are_filled(tmp_path):
    path = write(tmp_path, (CORPORA["sennrich"][0] + EOT) * 20)
    stats: dict = {}
    first = train_bpe(path, 300, [EOT], stats=stats)
    assert first == train_bpe(path, 300, [EOT])
    assert stats["vocab_size"] == len(first[0]) and stats["num_merges"] == len(first[1])
    learned = [token for token_id, token in first[0].items() if token_id != 256]  # 256: the special
    longest = max(learned, key=lambda token: (len(token), token))
    assert len(longest) < len(EOT)  # so the special token must not count as the longest
    assert stats["longest_token_bytes"] == len(longest)
    assert stats["longest_token"] == longest.decode("utf-8", errors="replace")
    assert stats["input_bytes"] == path.stat().st_size and stats["peak_memory_bytes"] > 0


# ---- bad input ---------------------------------------------------------------------------------

def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_bpe(tmp_path / "nope.txt", 300, [])
    with pytest.raises(ValueError, match="empty"):
        train_bpe(write(tmp_path, ""), 300, [])


@pytest.mark.parametrize("workers,chunk_bytes", [(1, 10**9), (2, 64)])
def test_invalid_utf8_names_the_byte_offset(tmp_path, workers, chunk_bytes):
    good = (f"hello wörld{EOT}" * 40).encode()
    path = tmp_path / "bad.txt"
    path.write_bytes(good + b"ok \xff\xfe more" + good)
    with pytest.raises(ValueError, match=f"byte offset {len(good) + 3}"):
        train_bpe(path, 300, [EOT], workers=workers, chunk_bytes=chunk_bytes)


def test_streaming_reader_names_the_byte_offset_across_blocks(tmp_path):
    path = tmp_path / "bad.txt"
    data = "aé日😀".encode() * 5 + b"\xc3(" + b"tail"
    path.write_bytes(data)
    bad_offset = data.index(b"\xc3(")
    for block in (1, 2, 3, 5, 1000):
        with pytest.raises(ValueError, match=f"byte offset {bad_offset}"):
            list(iter_text(path, block_bytes=block))
    path.write_bytes("aé日😀".encode() * 5)
    assert "".join(iter_text(path, block_bytes=3)) == "aé日😀" * 5


@pytest.mark.parametrize("vocab_size,special_tokens,message", [
    (255, [], "smaller than 256"),
    (256, [EOT], "smaller than 256"),
    (300, [EOT, EOT], "duplicate special"),
    (300, [""], "non-empty"),
])
def test_bad_parameters(tmp_path, vocab_size, special_tokens, message):
    with pytest.raises(ValueError, match=message):
        train_bpe(write(tmp_path, "some text"), vocab_size, special_tokens)


# ---- tinylm train-bpe --------------------------------------------------------------------------

def test_cli_writes_gpt2_files_and_stats(tmp_path, capsys):
    path = write(tmp_path, CORPORA["specials"][0] * 10)
    out = tmp_path / "tok"
    assert main(["train-bpe", "--input", str(path), "--vocab-size", "280", "--special-token", EOT,
                 "--special-token", "<|pad|>", "--out-dir", str(out), "--workers", "2", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "special_tokens.json", "stats.json", "vocab.json"]
    stats = json.loads((out / "stats.json").read_text())
    for key in ("training_time_s", "peak_memory_bytes", "vocab_size", "num_merges", "longest_token",
                "longest_token_bytes", "workers", "input_bytes"):
        assert key in stats
    assert json.loads((out / "special_tokens.json").read_text()) == [EOT, "<|pad|>"]
    assert (out / "merges.txt").read_text().splitlines()[0] == "#version: 0.2"
    assert "trained in" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--vocab-size", "100"], "smaller than 256"),
    (["--vocab-size", "300", "--special-token", ""], "non-empty"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    path = write(tmp_path, "text")
    out = tmp_path / "tok"
    assert main(["train-bpe", "--input", str(path), "--out-dir", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["train-bpe", "--input", str(tmp_path / "missing.txt"), "--vocab-size", "300",
                 "--out-dir", str(out)]) == 2
    assert "missing.txt" in capsys.readouterr().err and not out.exists()


NEEDS_COMPILED_TRAINER = pytest.mark.skipif(compiled_learn_merges is None,
                                            reason="the compiled trainer was not built (no C compiler at install)")


@NEEDS_COMPILED_TRAINER
@settings(max_examples=200, deadline=None)
@given(word_counts=st.dictionaries(st.binary(min_size=2, max_size=10), st.integers(1, 5), max_size=30),
       num_merges=st.integers(0, 60))
def test_compiled_merge_loop_equals_the_python_one(word_counts, num_merges):
    # Few distinct bytes and small counts: ties everywhere, and words that merge away entirely.
    words = list(word_counts)
    tokens = [bytes([byte]) for byte in range(256)] + [b"<special>"]
    reports: list[list[int]] = [[], []]
    python = learn_merges(words, list(word_counts.values()), tokens, num_merges, reports[0].append)
    compiled = compiled_learn_merges(words, list(word_counts.values()), tokens, num_merges, reports[1].append)
    assert compiled == python
    assert reports[0] == reports[1]


@NEEDS_COMPILED_TRAINER
def test_compiled_merge_loop_on_real_pretoken_counts(tmp_path, sample_data):
    path = sample_data / "owt" / "train.txt"
    counts, _ = count_file_pretokens(path, [EOT], workers=1)
    word_counts = Counter()
    for pretoken, count in counts.items():
        word_counts[pretoken.encode("utf-8")] += count
    words = [word for word in word_counts if len(word) > 1]
    tokens = [bytes([byte]) for byte in range(256)] + [EOT.encode()]
    args = (words, [word_counts[word] for word in words], tokens, 3000)
    assert compiled_learn_merges(*args) == learn_merges(*args)
