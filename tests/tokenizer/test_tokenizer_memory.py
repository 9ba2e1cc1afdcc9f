"""A dropped Tokenizer frees its memory, on the compiled and on the Python path.

Tokenizers on GPT-2's vocabulary hold megabytes each (the merge table, the compiled encoder's
tables), so one that outlives its last reference shows in the process's memory within a few dozen.
"""
from __future__ import annotations

import gc
import weakref

import psutil
import pytest

from tinylm.tokenizer import Tokenizer
from tinylm.tokenizer.pretokenize import character_class
from tinylm.tokenizer.tokenizer import CompiledEncoder

EOT = "<|endoftext|>"
TEXT = "Once upon a time, a little robot found 3 shiny stones by the river.\n\n" * 20
PATHS = [pytest.param(True, id="compiled"), pytest.param(False, id="python")]


@pytest.fixture(scope="module")
def gpt2_definition(sample_data) -> tuple[dict, list]:
    vocab, merges = sample_data / "gpt2" / "encoder.json", sample_data / "gpt2" / "vocab.bpe"
    tokenizer = Tokenizer.from_files(vocab, merges, [EOT])
    return tokenizer.vocab, tokenizer.merges


def used_tokenizer(definition: tuple[dict, list], compiled: bool) -> Tokenizer:
    if compiled and CompiledEncoder is None:
        pytest.skip("the compiled encoder is not built")
    tokenizer = Tokenizer(*definition, [EOT], compiled=compiled)
    assert tokenizer.compiled == compiled
    tokenizer.encode(TEXT)  # fills the caches, so they too must be freed
    return tokenizer


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.mark.parametrize("compiled", PATHS)
def test_a_dropped_tokenizer_is_freed_without_the_garbage_collector(gpt2_definition, compiled):
    gc.disable()
    try:
        ref = weakref.ref(used_tokenizer(gpt2_definition, compiled))
        assert ref() is None, "a reference cycle keeps the tokenizer alive until the next collection"
    finally:
        gc.enable()


@pytest.mark.parametrize("compiled", PATHS)
@pytest.mark.parametrize("count", [30, pytest.param(500, marks=pytest.mark.slow)])
def test_many_tokenizers_leave_no_survivors_and_flat_memory(gpt2_definition, compiled, count):
    used_tokenizer(gpt2_definition, compiled)  # one-off allocations (regex caches, arenas) come first
    before = rss()
    alive = [used_tokenizer(gpt2_definition, compiled) for _ in range(3)]
    per_tokenizer = (rss() - before) / len(alive)
    del alive
    start = rss()
    refs = [weakref.ref(used_tokenizer(gpt2_definition, compiled)) for _ in range(count)]
    grown = rss() - start
    assert sum(ref() is not None for ref in refs) == 0
    assert per_tokenizer > 2**20  # so that a leak of even a few tokenizers would show below
    assert grown < 2 * per_tokenizer, f"{grown / 2**20:.0f} MiB more after {count} tokenizers"


def test_the_compiled_encoder_takes_part_in_garbage_collection(gpt2_definition):
    """An owner holding an Encoder whose callback is the owner's bound method is a cycle through C:
    only the encoder's GC support lets the collector free it."""
    if CompiledEncoder is None:
        pytest.skip("the compiled encoder is not built")
    tokenizer = Tokenizer(*gpt2_definition, [EOT], compiled=False)

    class Owner:
        def __init__(self):
            self.encoder = CompiledEncoder(tokenizer.merge_table, tokenizer.byte_ids, self.bpe, 64,
                                           character_class, 100)

        def bpe(self, pretoken: str) -> list[int]:
            return tokenizer._bpe(pretoken)

    owner = Owner()
    assert owner.encoder.encode("-" * 100) == tokenizer.encode("-" * 100)  # the callback in use
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None

