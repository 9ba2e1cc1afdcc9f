"""Token arrays on disk -> training and validation batches.

Token arrays are `.npy` files opened memory-mapped, so a multi-GB corpus costs only the pages a
batch touches. Training batches are a pure function of (seed, step): a resumed run, or N processes
each taking a slice of the global batch, draw exactly what one uninterrupted process would.
"""
from __future__ import annotations

import contextlib
import math
import os

import numpy as np
import torch

from tinylm.files import file_error, load_npy


def load_tokens(path: str | os.PathLike, min_tokens: int = 1, needed_for: str = "") -> np.ndarray:
    """Open a 1-D integer token array memory-mapped (read-only, never loaded whole).

    An array of fewer than `min_tokens` tokens is an error; `needed_for` says why that many are
    needed (say, "model.context_length + 1")."""
    tokens = load_npy(path, "token file")
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise file_error("token file", path, f"must hold a 1-D integer array, got shape {tokens.shape} "
                                             f"dtype {tokens.dtype}")
    if len(tokens) < min_tokens:
        reason = f" ({needed_for})" if needed_for else ""
        raise file_error("token file", path, f"holds {len(tokens)} tokens, fewer than the {min_tokens}"
                                             f"{reason} needed")
    return tokens


def check_token_ids(tokens: np.ndarray, vocab_size: int, what: str, vocabulary: str = "model.vocab_size") -> None:
    """ValueError naming `what` if a token id does not fit the vocabulary (one pass over the map)."""
    largest = int(tokens.max())
    if largest >= vocab_size:
        raise ValueError(f"{what} holds token id {largest}, but {vocabulary} is {vocab_size}")
    if np.issubdtype(tokens.dtype, np.signedinteger) and int(tokens.min()) < 0:
        raise ValueError(f"{what} holds the negative token id {int(tokens.min())}")


def sample_starts(num_tokens: int, batch_size: int, context_length: int,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """`batch_size` random window starts; every window has `context_length + 1` tokens in range."""
    if num_tokens <= context_length:
        raise ValueError(f"need more than context_length={context_length} tokens to draw a batch, "
                         f"the array has {num_tokens}")
    high = num_tokens - context_length  # exclusive: start + context_length is the last target
    if rng is None:
        return np.random.randint(0, high, size=batch_size)
    return rng.integers(0, high, size=batch_size)


def batch_from_starts(dataset: np.ndarray, starts: np.ndarray, context_length: int,
                      device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets of the windows at `starts`: two (batch, context) int64 tensors."""
    offsets = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(context_length + 1)
    windows = torch.from_numpy(np.asarray(dataset[offsets], dtype=np.int64))  # (batch, context + 1)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    if torch.device(device).type == "cuda":
        # Pinned host memory lets the copy overlap with the previous step's kernels.
        return (inputs.pin_memory().to(device, non_blocking=True),
                targets.pin_memory().to(device, non_blocking=True))
    return inputs.contiguous().to(device), targets.contiguous().to(device)


def get_batch(dataset: np.ndarray, batch_size: int, context_length: int, device: str,
              rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of (inputs, targets), each (batch_size, context_length) int64 on `device`.

    Without `rng` the starts come from numpy's global random state (seed it with np.random.seed).
    """
    starts = sample_starts(len(dataset), batch_size, context_length, rng)
    return batch_from_starts(dataset, starts, context_length, device)


def train_batch_starts(num_tokens: int, batch_size: int, context_length: int, seed: int,
                       step: int) -> np.ndarray:
    """The global batch of training step `step` (0-based): the same for every process and resume."""
    return sample_starts(num_tokens, batch_size, context_length, np.random.default_rng([seed, step]))


def validation_starts(num_tokens: int, num_batches: int, batch_size: int, context_length: int,
                      seed: int) -> list[np.ndarray]:
    """Fixed, seeded validation batches, drawn once and reused at every evaluation."""
    # A stream of its own (the constant tag) so it never coincides with a training batch's stream.
    rng = np.random.default_rng([seed, 0x7661_6C69])
    return [sample_starts(num_tokens, batch_size, context_length, rng) for _ in range(num_batches)]


def rank_slice(starts: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This process's contiguous share of a global batch (the batch divides evenly)."""
    per_rank = len(starts) // world_size
    return starts[rank * per_rank:(rank + 1) * per_rank]


def sequential_windows(num_tokens: int, context_length: int,
                       max_tokens: int | None = None) -> list[tuple[int, int]]:
    """(start, length) windows that predict every token after the first exactly once.

    Windows are `context_length` predictions long; the last may be shorter. `max_tokens` caps the
    number of predicted tokens (the first `max_tokens + 1` tokens of the array are used).
    """
    predicted = num_tokens - 1
    if max_tokens is not None:
        predicted = min(predicted, max_tokens)
    if predicted < 1:
        raise ValueError(f"need at least 2 tokens to evaluate, the array has {num_tokens}")
    count = math.ceil(predicted / context_length)
    return [(i * context_length, min(context_length, predicted - i * context_length)) for i in range(count)]


@torch.no_grad()
def loss_sum_over_windows(model: torch.nn.Module, dataset: np.ndarray, windows: list[tuple[int, int]],
                          batch_size: int, window: int, device: str | torch.device, loss_fn,
                          precision_context=contextlib.nullcontext) -> tuple[float, int]:
    """Summed next-token loss and token count of `windows`, (start, length) pairs of length <= `window`.

    Every forward pass has the same shape, (batch_size, window), so a compiled model compiles once:
    a shorter window is padded at its end (with causal attention, padding never changes the
    positions before it) and the last batch with empty rows; only real positions are scored.
    `loss_fn(logits, targets)` returns the mean loss; it is weighted back by the token count.
    `precision_context()` wraps the forward pass (e.g. bf16 autocast). The sum stays on the device
    until the end, so the host waits once, not once per batch.
    """
    device = torch.device(device)
    positions = np.arange(window + 1)
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for i in range(0, len(windows), batch_size):
        chunk = np.zeros((batch_size, 2), dtype=np.int64)          # (start, length); empty rows: length 0
        chunk[:len(windows[i:i + batch_size])] = windows[i:i + batch_size]
        offsets = np.minimum(chunk[:, :1] + positions, len(dataset) - 1)
        tokens = torch.from_numpy(np.asarray(dataset[offsets], dtype=np.int64)).to(device)  # (batch, window + 1)
        with precision_context():
            logits = model(tokens[:, :-1])                          # (batch, window, vocab)
        targets = tokens[:, 1:]
        scored = positions[:window] < chunk[:, 1:]                  # (batch, window), on the host
        if not scored.all():  # rows of the flattened batch picked by index: a boolean mask would sync
            rows = torch.from_numpy(np.flatnonzero(scored)).to(device)
            logits, targets = logits.flatten(0, 1)[rows], targets.flatten()[rows]
        scored_count = int(scored.sum())
        total += loss_fn(logits.float(), targets).double() * scored_count
        count += scored_count
    return total.item(), count
