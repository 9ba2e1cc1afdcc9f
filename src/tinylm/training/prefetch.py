"""Training batches prepared one step ahead, while the current step runs.

The batch of step t is a pure function of (seed, t) (`tinylm.data.tokens.train_batch_starts`), so it can
be gathered early without changing what is trained. A worker thread gathers the next step's windows
from the memory-mapped array (into pinned memory on CUDA); the main thread then copies them with
`non_blocking=True`, queued behind the step the device is still running.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from tinylm.data.tokens import rank_slice, train_batch_starts


class BatchPrefetcher:
    def __init__(self, tokens: np.ndarray, batch_size: int, context_length: int, seed: int,
                 rank: int, world_size: int, device: torch.device):
        self.tokens, self.batch_size, self.context = tokens, batch_size, context_length
        self.seed, self.rank, self.world_size, self.device = seed, rank, world_size, device
        self.pin = device.type == "cuda"
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tinylm-batches")
        self.pending: tuple[int, Future] | None = None

    def _gather(self, step: int) -> torch.Tensor:
        """This process's windows of step `step`: (batch, context + 1) int64 on the host."""
        starts = train_batch_starts(len(self.tokens), self.batch_size, self.context, self.seed, step)
        mine = rank_slice(starts, self.rank, self.world_size)
        offsets = np.asarray(mine, dtype=np.int64)[:, None] + np.arange(self.context + 1)
        windows = torch.from_numpy(np.asarray(self.tokens[offsets], dtype=np.int64))
        return windows.pin_memory() if self.pin else windows

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of step `step` (0-based) on the device; starts gathering step + 1."""
        if self.pending is not None and self.pending[0] == step:
            windows = self.pending[1].result()
        else:
            windows = self._gather(step)
        self.pending = (step + 1, self.executor.submit(self._gather, step + 1))
        windows = windows.to(self.device, non_blocking=self.pin)
        return windows[:, :-1], windows[:, 1:]

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
