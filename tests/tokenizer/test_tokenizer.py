"""Tokenizer: GPT-2 equality with tiktoken, round trips, streaming, file formats, bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import regex
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tinylm.tokenizer.pretokenize as pretokenize_module
import tinylm.tokenizer.tokenizer as tokenizer_module
from tinylm.tokenizer import Tokenizer, train_bpe
from tinylm.tokenizer.pretokenize import ASCII_REGEX, GPT2_PATTERN, GPT2_REGEX

EOT = "<|endoftext|>"
VARIED_TEXTS = [
    "Once upon a time, there was a little girl named Lily. She's happy; they'll see, we've won!",
    "def encode(self, text: str) -> list[int]:\n    return [ord(c) for c in text]  # TODO\n\n\n",
    "   leading spaces\t\ttabs\r\nwindows line\n\n\n\ntrailing   ",
    "emoji 😀👍🏽🏳️‍🌈 and CJK 日本語のテキスト 中文 한국어, RTL مرحبا שלום",
    f"first document{EOT}second document{EOT}{EOT}third",
    "numbers 1234567890 3.14159 1e-9 $100,000 and 'quotes' \"double\" `back`",
    "zero\u200bwidth e\u0301 combining ﷽ \x00\x01 control \x7f",
    "",
    " ",
    "\n",
]


@pytest.fixture(scope="module")
def gpt2_files(sample_data) -> tuple[Path, Path]:
    return sample_data / "gpt2" / "encoder.json", sample_data / "gpt2" / "vocab.bpe"


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> Tokenizer:
    return Tokenizer.from_files(*gpt2_files, special_tokens=[EOT])


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_files, tmp_path_factory):
    """tiktoken.get_encoding("gpt2") offline: tiktoken finds its downloads by the sha1 of their
    URL in TIKTOKEN_CACHE_DIR (see data/SOURCES.md)."""
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    shutil.copy(gpt2_files[1], cache / "6d1cbeee0f20b3d9449abfede4726ed8212e3aee")
    shutil.copy(gpt2_files[0], cache / "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        return pytest.importorskip("tiktoken").get_encoding("gpt2")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Tokenizer:
    """Trained on the varied texts alone, so that these tests do not depend on the samples."""
    path = tmp_path_factory.mktemp("small") / "train.txt"
    path.write_text("".join(VARIED_TEXTS) * 5, encoding="utf-8")
    vocab, merges = train_bpe(path, 500, [EOT])
    return Tokenizer(vocab, merges, [EOT])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_data) -> Tokenizer:
    path = tmp_path_factory.mktemp("trained") / "train.txt"
    path.write_bytes((sample_data / "tinystories" / "train.txt").read_bytes()[:1_000_000])
    vocab, merges = train_bpe(path, 2000, [EOT])
    return Tokenizer(vocab, merges, [EOT])


def test_gpt2_matches_tiktoken_on_varied_text(gpt2, tiktoken_gpt2):
    for text in VARIED_TEXTS:
        assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all"), text
        assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_matches_tiktoken_on_real_text(gpt2, tiktoken_gpt2, sample_data):
    text = (sample_data / "owt" / "valid.txt").read_text(encoding="utf-8")[:400_000]
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.encode("a" + EOT + "b") == [64, 50256, 65]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_gpt2_matches_tiktoken_on_arbitrary_text(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


def test_gpt2_matches_tiktoken_on_long_pretokens(gpt2, tiktoken_gpt2):
    text = "-" * 5000 + " " + "ab" * 3000 + " " + "日本" * 500 + "=" * 70 + "\n" * 300 + "x" * 65
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "e", "t", "h", "-", "=", "é", "日", "ll", "the", "aa", " "]),
                min_size=1, max_size=120).map("".join))
def test_long_word_merge_loop_equals_the_simple_one(small, word):
    ids = [small.byte_ids[byte] for byte in word.encode()]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokenizer_module, "_LONG_WORD", 10**9)
        assert tokenizer_module.bpe_long(ids, small.merge_table) == small._bpe(word)


def test_trained_matches_tiktoken_built_from_our_ranks(trained, sample_data):
    ranks = {token: token_id for token_id, token in trained.vocab.items()
             if token_id not in trained.special_ids.values()}
    encoding = pytest.importorskip("tiktoken").Encoding("ours", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens=dict(trained.special_ids))
    for corpus in ("tinystories", "owt"):
        text = (sample_data / corpus / "valid.txt").read_text(encoding="utf-8")[:300_000]
        assert trained.encode(text) == encoding.encode(text, allowed_special="all")
    for text in VARIED_TEXTS:
        assert trained.encode(text) == encoding.encode(text, allowed_special="all")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_on_arbitrary_strings(small, text):
    assert small.decode(small.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fast_pattern_splits_like_the_gpt2_pattern(text):
    assert GPT2_REGEX.findall(text) == regex.findall(GPT2_PATTERN, text)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(max_codepoint=127)))
def test_ascii_pattern_splits_like_the_gpt2_pattern(text):
    assert ASCII_REGEX.findall(text) == regex.findall(GPT2_PATTERN, text)


def test_special_tokens_longest_first():
    vocab = {i: bytes([i]) for i in range(256)}
    tokenizer = Tokenizer(vocab, [], [EOT, EOT + EOT])
    single, double = tokenizer.special_ids[EOT], tokenizer.special_ids[EOT + EOT]
    assert tokenizer.encode(EOT * 3 + "x" + EOT) == [double, single, ord("x"), single]
    assert tokenizer.decode([double, single]) == EOT * 3
    # Without special tokens the same text is ordinary bytes.
    assert Tokenizer(vocab, []).encode(EOT) == list(EOT.encode())


def test_decode_invalid_utf8_gives_replacement_character(small):
    assert small.decode([0xff]) == "\ufffd"
    euro = "€".encode()
    assert small.decode([euro[0], euro[1]]) == "\ufffd"
    assert small.decode([]) == ""


@pytest.mark.parametrize("bad", [-1, 10**6, "a"])
def test_decode_rejects_ids_outside_the_vocabulary(small, bad):
    with pytest.raises(ValueError, match=f"token id {bad!r} at position 1"):
        small.decode([65, bad])


def test_save_and_load_round_trip(trained, tmp_path, sample_data):
    trained.save(tmp_path / "tok")
    loaded = Tokenizer.from_dir(tmp_path / "tok")
    assert loaded.vocab == trained.vocab and loaded.merges == trained.merges
    assert loaded.special_tokens == [EOT]
    text = (sample_data / "owt" / "valid.txt").read_text(encoding="utf-8")[:50_000]
    assert loaded.encode(text) == trained.encode(text)
    assert Tokenizer.from_files(tmp_path / "tok" / "vocab.json", tmp_path / "tok" / "merges.txt",
                                [EOT]).encode(text) == trained.encode(text)


def test_save_refuses_duplicate_token_bytes(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)}
    tokenizer = Tokenizer(vocab, [], ["a"])  # the special "a" is a second id for byte 97
    assert tokenizer.encode("aa") == [256, 256] and tokenizer.decode([97, 256]) == "aa"
    with pytest.raises(ValueError, match="same bytes"):
        tokenizer.save(tmp_path / "tok")
    assert not (tmp_path / "tok" / "vocab.json").exists()


def test_loading_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="lacks the single byte"):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="missing from the vocabulary"):
        Tokenizer(vocab, [(b"a", b"b")])
    Tokenizer(vocab, []).save(tmp_path / "bytes_only")
    with pytest.raises(ValueError, match="merges.txt': line 2"):
        Tokenizer.from_files(tmp_path / "bytes_only" / "vocab.json", tmp_path / "merges.txt")


# ---- encode_iterable ---------------------------------------------------------------------------

def test_encode_iterable_over_a_multi_megabyte_file_equals_encode(trained, sample_data, tmp_path):
    path = tmp_path / "big.txt"
    parts = [(sample_data / corpus / "valid.txt").read_text(encoding="utf-8")
             for corpus in ("tinystories", "owt")]
    path.write_text("".join(parts) + "\n\n  trailing   \n", encoding="utf-8")
    with open(path, encoding="utf-8") as file:
        streamed = list(trained.encode_iterable(file))
    assert streamed == trained.encode(path.read_text(encoding="utf-8"))


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.one_of(st.text(" l'\nx日<|endoftext>", max_size=5), st.sampled_from(
           [EOT, "<|endof", "text|>", EOT + EOT, " ", "  ", "\n\n", "'ll", "'", "ll", "x", "日"])), max_size=40),
       block=st.integers(1, 6), specials=st.sampled_from([[], [EOT], [EOT, EOT + EOT]]))
@example(pieces=["x'l", "l"], block=1, specials=[])
@example(pieces=["\n\n", "<<<", "<<<<<"], block=1, specials=[])
@example(pieces=["a" * 20, "<|endof", "text|>", EOT, "b"], block=1, specials=[EOT, EOT + EOT])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_encode_iterable_equals_encode_wherever_the_pieces_are_cut(pieces, block, specials, compiled):
    # Merges inside every kind of pre-token whose end depends on what follows it.
    merges = [(b" ", b"l"), (b"l", b"l"), (b" l", b"l"), (b"'", b"ll"), (b" ", b" "),
              (b"\n", b"\n"), (b"\n", b" ")]
    vocab = {i: bytes([i]) for i in range(256)} | {256 + i: a + b for i, (a, b) in enumerate(merges)}
    tokenizer = Tokenizer(vocab, merges, specials, compiled=compiled)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pretokenize_module, "STREAM_BLOCK_CHARS", block)  # exercise the partial path
        assert list(tokenizer.encode_iterable(iter(pieces))) == tokenizer.encode("".join(pieces))


def test_encode_iterable_is_lazy(small):
    def endless():
        while True:
            yield "the cat sat on the mat. " * 100

    ids = small.encode_iterable(endless())
    first = [next(ids) for _ in range(1000)]
    assert small.decode(first).startswith("the cat sat")
