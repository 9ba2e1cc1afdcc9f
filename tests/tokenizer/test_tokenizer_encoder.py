"""The compiled encoder (`tokenizer/_encoder.c`) against the Python path and the GPT-2 pattern."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import regex
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tinylm.tokenizer import Tokenizer, train_bpe
from tinylm.tokenizer.pretokenize import GPT2_PATTERN, character_class, segment
from tinylm.tokenizer.tokenizer import CompiledEncoder

EOT = "<|endoftext|>"
needs_compiled = pytest.mark.skipif(CompiledEncoder is None,
                                    reason="the compiled encoder was not built (no C compiler at install)")

# Characters where the pattern's cases meet: contractions, the optional space, every whitespace
# kind (also Unicode's), letters and numbers beyond ASCII, and characters of several UTF-8 lengths.
TRICKY = st.text(st.sampled_from(list("'sdmtlvre ll\n\t\r\x0b\x0c\x1c\x85\xa0\u2003\u3000aZé日ß²½①٣Ⅻ.,!-😀_")),
                 max_size=80)


def compiled_encoder(tokenizer: Tokenizer, max_entries: int = 1 << 10) -> CompiledEncoder:
    return CompiledEncoder(tokenizer.merge_table, tokenizer.byte_ids, tokenizer._bpe, 64, character_class,
                           max_entries)


BYTES_ONLY = Tokenizer({i: bytes([i]) for i in range(256)}, [], compiled=False)


@needs_compiled
@settings(max_examples=500, deadline=None)
@given(st.one_of(TRICKY, st.text()))
@example("'s'll'LL 're'x' ''s")
@example("a  \n b\n\n\tc   ")
@example(" ")
def test_compiled_scanner_splits_like_the_gpt2_pattern(text):
    assert compiled_encoder(BYTES_ONLY).pretokenize(text) == regex.findall(GPT2_PATTERN, text)


@needs_compiled
def test_compiled_scanner_on_real_text(sample_data):
    for corpus in ("tinystories", "owt"):
        text = (sample_data / corpus / "valid.txt").read_text(encoding="utf-8")[:500_000]
        assert compiled_encoder(BYTES_ONLY).pretokenize(text) == regex.findall(GPT2_PATTERN, text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(TRICKY, st.text()))
def test_segments_pretokenize_as_the_whole_text(text):
    assert [p for part in segment(text) for p in regex.findall(GPT2_PATTERN, part)] == \
        regex.findall(GPT2_PATTERN, text)
    assert "".join(segment(text)) == text


# Special tokens that overlap each other every way: one inside another, one the prefix or the
# suffix of another, and several UTF-8 lengths.
OVERLAPPING_SPECIALS = ["ab", "bab", "b日", "日", "<|x|>", "<|x|><|x|>", "x|>"]
SPECIALS_BYTES_ONLY = [Tokenizer({i: bytes([i]) for i in range(256)}, [], OVERLAPPING_SPECIALS, compiled=compiled)
                       for compiled in (True, False)]


@needs_compiled
@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from(list("ab日<|x> \n")), max_size=40))
@example("bab日<|x|><|x|><|x|>b日ab")
def test_compiled_encoder_cuts_special_tokens_like_the_splitter(text):
    """Leftmost first, the longest of those starting at one place, as `Splitter` cuts them."""
    compiled, python = SPECIALS_BYTES_ONLY
    assert compiled.compiled and not python.compiled
    assert compiled.encode(text) == python.encode(text)


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[Tokenizer, Tokenizer]:
    """One vocabulary, encoded by the compiled path (where built) and by the Python path."""
    path = tmp_path_factory.mktemp("both") / "train.txt"
    path.write_text("The cat's hat, 12 ½ cats; l'été à Paris 日本語 😀\n\n they'll  see\t" * 40
                    + EOT + "naïve café 3.14 ٣٤ '' x", encoding="utf-8")
    vocab, merges = train_bpe(path, 400, [EOT])
    return Tokenizer(vocab, merges, [EOT]), Tokenizer(vocab, merges, [EOT], compiled=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(TRICKY, st.text(max_size=20), st.just(EOT)), max_size=8).map("".join))
def test_compiled_and_python_paths_give_the_same_ids(both, text):
    compiled, python = both
    assert compiled.compiled == (CompiledEncoder is not None) and not python.compiled
    assert compiled.encode(text) == python.encode(text)
    assert python.decode(python.encode(text)) == text


def test_both_paths_on_real_text(both, sample_data):
    compiled, python = both
    text = (sample_data / "owt" / "valid.txt").read_text(encoding="utf-8")[:300_000]
    assert compiled.encode(text) == python.encode(text)


@needs_compiled
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "e", "t", "h", "-", "=", "é", "日", "ll", "the", "aa", " "]),
                min_size=1, max_size=150).map("".join))
def test_compiled_merges_equal_python_merges_on_long_words(both, word):
    """Words up to `long_word` bytes merge in C, longer ones in Python's heap loop."""
    compiled, python = both
    for long_word in (3, 64, 1000):
        encoder = CompiledEncoder(python.merge_table, python.byte_ids, python._bpe, long_word, character_class, 100)
        assert encoder.encode(word) == python.encode(word)


@needs_compiled
def test_bounded_cache_still_encodes_correctly(both):
    compiled, python = both
    small_cache = compiled_encoder(python, max_entries=3)
    text = "the cat sat on the mat, and then the dog sat on the cat " * 20
    assert small_cache.encode(text) == python.encode(text)
    assert small_cache.cached <= 3
    small_cache.clear()
    assert small_cache.cached == 0
    # Pre-tokens longer than long_word bytes are merged in Python and never cached, so the cache
    # holds at most max_entries x long_word bytes of keys.
    long_words = " ".join("abcdefgh"[i:] + "xyz" * 30 for i in range(8))
    assert small_cache.encode(long_words) == python.encode(long_words)
    assert small_cache.cached == 0


@needs_compiled
def test_ids_are_the_same_ints_after_clear_and_beyond_the_vocabulary(both):
    """The encoder shares one int per id between calls until clear(); ids that no merge makes (a
    bpe_long may return them) still come back."""
    python = both[1]
    encoder = compiled_encoder(python)
    text = "the cat sat on the mat " * 3
    first = encoder.encode(text)
    encoder.clear()
    assert encoder.encode(text) == first == python.encode(text)
    beyond = CompiledEncoder(python.merge_table, python.byte_ids, lambda pretoken: [2**31, 7], 1,
                             character_class, 10)
    assert beyond.encode("ab ab") == [2**31, 7, 2**31, 7]


@needs_compiled
def test_compiled_encoder_rejects_bad_arguments(both):
    python = both[1]
    with pytest.raises(TypeError, match="str"):
        compiled_encoder(python).encode(b"bytes")
    with pytest.raises(TypeError, match="list of ids"):
        CompiledEncoder(python.merge_table, python.byte_ids, lambda pretoken: None, 1, character_class, 10).encode("ab")
    with pytest.raises(ValueError, match="max_entries"):
        CompiledEncoder(python.merge_table, python.byte_ids, python._bpe, 64, character_class, 0)
    with pytest.raises(ValueError, match="256"):
        CompiledEncoder(python.merge_table, python.byte_ids[:10], python._bpe, 64, character_class, 10)
    with pytest.raises(OverflowError):
        CompiledEncoder({(1, 2): (0, 2**40)}, python.byte_ids, python._bpe, 64, character_class, 10)
    with pytest.raises(TypeError, match="special_ids must be a dict"):
        CompiledEncoder(python.merge_table, python.byte_ids, python._bpe, 64, character_class, 10, [EOT])
    with pytest.raises(ValueError, match="non-empty str"):
        CompiledEncoder(python.merge_table, python.byte_ids, python._bpe, 64, character_class, 10, {"": 1})
    with pytest.raises(OverflowError):
        CompiledEncoder(python.merge_table, python.byte_ids, python._bpe, 64, character_class, 10, {EOT: 2**40})


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
def test_lone_surrogates_are_a_clear_error(both, compiled):
    tokenizer = both[0] if compiled else both[1]
    with pytest.raises(UnicodeEncodeError):
        tokenizer.encode("fine \ud800 not")


def test_pickled_tokenizer_encodes_the_same(both):
    """Spawned worker processes (`tinylm tokenize` on macOS and Windows) receive it pickled."""
    text = "The cat's hat " + EOT + " naïve 😀"
    for tokenizer in both:
        tokenizer.encode(text)  # fill the caches, which pickling leaves behind
        copy = pickle.loads(pickle.dumps(tokenizer))
        assert copy.encode(text) == tokenizer.encode(text)
        assert copy.compiled == tokenizer.compiled
    vocab = {i: bytes([i]) for i in range(256)}
    added = Tokenizer(vocab, [], ["<new>"])  # a special token new to the vocabulary gets an id
    assert pickle.loads(pickle.dumps(added)).encode("a<new>") == added.encode("a<new>") == [97, 256]


WITHOUT_EXTENSIONS = """
import json, sys
sys.modules["tinylm.tokenizer._encoder"] = sys.modules["tinylm.tokenizer._trainer"] = None  # import fails
from tinylm.tokenizer import Tokenizer, train_bpe
from tinylm.tokenizer import tokenizer, training
assert tokenizer.CompiledEncoder is None and training.compiled_learn_merges is None
vocab, merges = train_bpe(sys.argv[1], 300, ["<|endoftext|>"], workers=1)
print(json.dumps([[a.hex(), b.hex()] for a, b in merges]))
print(json.dumps(Tokenizer(vocab, merges, ["<|endoftext|>"]).encode(sys.argv[2])))
"""


def test_installs_without_a_c_compiler_train_and_encode_the_same(tmp_path):
    """What an install gets where setup.py could not build the extensions."""
    path = tmp_path / "train.txt"
    text = "The cat's hat, l'été 12 ½; they'll  see\n\n" * 30 + EOT + "naïve café 😀 " * 20
    path.write_text(text, encoding="utf-8")
    completed = subprocess.run([sys.executable, "-c", WITHOUT_EXTENSIONS, str(path), text], check=True,
                               capture_output=True, text=True)
    merges_line, ids_line = completed.stdout.splitlines()
    vocab, merges = train_bpe(path, 300, [EOT], workers=1)
    assert json.loads(merges_line) == [[a.hex(), b.hex()] for a, b in merges]
    assert json.loads(ids_line) == Tokenizer(vocab, merges, [EOT]).encode(text)
