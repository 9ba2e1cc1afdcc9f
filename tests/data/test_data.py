"""tinylm.data.tokens: batches from memory-mapped token arrays, validation windows, chunked evaluation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tinylm.data.tokens import (
    batch_from_starts,
    get_batch,
    load_tokens,
    loss_sum_over_windows,
    rank_slice,
    sequential_windows,
    train_batch_starts,
    validation_starts,
)


def test_get_batch_shapes_dtypes_and_next_token_targets():
    dataset = np.arange(100, dtype=np.uint16)
    inputs, targets = get_batch(dataset, batch_size=5, context_length=7, device="cpu")
    assert inputs.shape == targets.shape == (5, 7)
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.device.type == "cpu"
    # The dataset is 0..99, so every window is consecutive and targets are inputs + 1.
    assert torch.equal(targets, inputs + 1)
    assert torch.equal(inputs, inputs[:, :1] + torch.arange(7))


def test_get_batch_starts_cover_exactly_the_valid_range():
    dataset = np.arange(12, dtype=np.uint16)
    context_length = 4
    np.random.seed(0)
    firsts = set()
    for _ in range(300):
        inputs, targets = get_batch(dataset, 8, context_length, "cpu")
        firsts.update(inputs[:, 0].tolist())
        assert targets.max() <= 11
    # Windows need context_length + 1 tokens: starts 0 .. 12 - 4 - 1 = 7, all reachable.
    assert firsts == set(range(8))


def test_get_batch_follows_numpy_global_seed_and_explicit_generator():
    dataset = np.arange(1000, dtype=np.uint16)
    np.random.seed(3)
    first = get_batch(dataset, 4, 8, "cpu")[0]
    np.random.seed(3)
    assert torch.equal(first, get_batch(dataset, 4, 8, "cpu")[0])
    a = get_batch(dataset, 4, 8, "cpu", rng=np.random.default_rng(5))[0]
    b = get_batch(dataset, 4, 8, "cpu", rng=np.random.default_rng(5))[0]
    assert torch.equal(a, b)


def test_get_batch_rejects_a_dataset_shorter_than_a_window():
    with pytest.raises(ValueError, match="context_length=8"):
        get_batch(np.arange(8, dtype=np.uint16), 2, 8, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_get_batch_on_cuda():
    inputs, targets = get_batch(np.arange(100, dtype=np.uint16), 2, 4, "cuda")
    assert inputs.device.type == targets.device.type == "cuda"


def test_load_tokens_is_memory_mapped_and_validated(tmp_path):
    path = tmp_path / "tokens.npy"
    np.save(path, np.arange(50, dtype=np.uint16))
    tokens = load_tokens(path)
    assert isinstance(tokens, np.memmap)
    assert tokens.dtype == np.uint16 and len(tokens) == 50

    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_tokens(tmp_path / "missing.npy")
    np.save(tmp_path / "matrix.npy", np.zeros((3, 3), dtype=np.uint16))
    with pytest.raises(ValueError, match="1-D integer"):
        load_tokens(tmp_path / "matrix.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="junk.npy"):
        load_tokens(tmp_path / "junk.npy")


def test_training_batches_depend_only_on_seed_and_step_and_split_across_ranks():
    a = train_batch_starts(10_000, 8, 16, seed=1, step=5)
    assert np.array_equal(a, train_batch_starts(10_000, 8, 16, seed=1, step=5))
    assert not np.array_equal(a, train_batch_starts(10_000, 8, 16, seed=1, step=6))
    assert not np.array_equal(a, train_batch_starts(10_000, 8, 16, seed=2, step=5))
    shares = [rank_slice(a, rank, 4) for rank in range(4)]
    assert all(len(share) == 2 for share in shares)
    assert np.array_equal(np.concatenate(shares), a)


def test_validation_batches_are_fixed_and_in_range():
    first = validation_starts(500, 3, 4, 10, seed=0)
    again = validation_starts(500, 3, 4, 10, seed=0)
    assert len(first) == 3 and all(len(batch) == 4 for batch in first)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert max(batch.max() for batch in first) <= 500 - 10 - 1


@pytest.mark.parametrize("num_tokens, context, cap", [(11, 4, None), (13, 4, None), (5, 8, None), (100, 8, 20)])
def test_sequential_windows_predict_each_token_once(num_tokens, context, cap):
    windows = sequential_windows(num_tokens, context, cap)
    predicted = []
    for start, length in windows:
        assert 1 <= length <= context
        predicted.extend(range(start + 1, start + length + 1))  # positions of the targets
    expected = num_tokens - 1 if cap is None else min(num_tokens - 1, cap)
    assert predicted == list(range(1, expected + 1))


class BigramModel(torch.nn.Module):
    """Logits depend only on the current token: the exact loss is easy to compute independently."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

        self.shapes: list[tuple[int, ...]] = []

    def forward(self, token_ids):
        self.shapes.append(tuple(token_ids.shape))
        return self.table[token_ids]


def test_loss_over_windows_equals_the_per_token_mean_over_the_array():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 10, size=103).astype(np.uint16)
    table = torch.randn(10, 10, generator=torch.Generator().manual_seed(0))
    log_probs = torch.log_softmax(table.double(), dim=-1).numpy()
    expected = -np.mean([log_probs[tokens[i], tokens[i + 1]] for i in range(len(tokens) - 1)])

    windows = sequential_windows(len(tokens), 8)  # twelve full windows and one of length 6
    model = BigramModel(table)
    total, count = loss_sum_over_windows(model, tokens, windows, batch_size=5, window=8, device="cpu",
                                         loss_fn=_torch_mean_cross_entropy)
    assert count == 102
    assert total / count == pytest.approx(expected, rel=1e-6)
    # The short last window and the short last batch are padded: a compiled model sees one shape.
    assert model.shapes == [(5, 8)] * 3


def _torch_mean_cross_entropy(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def test_batch_from_starts_reads_the_windows_at_the_given_starts():
    dataset = np.arange(40, dtype=np.uint16) * 3
    inputs, targets = batch_from_starts(dataset, np.array([0, 10, 30]), 5, "cpu")
    assert inputs[1].tolist() == [30, 33, 36, 39, 42]
    assert targets[2].tolist() == [93, 96, 99, 102, 105]
