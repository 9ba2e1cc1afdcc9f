"""Position-wise feed-forward networks: SwiGLU (the default) and the plain SiLU MLP (a variant)."""
from __future__ import annotations

import torch
from torch import nn

from tinylm.nn.functional import silu
from tinylm.nn.layers import Linear


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x); w1, w3: (d_ff, d_model), w2: (d_model, d_ff)."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(silu(self.w1(x)) * self.w3(x))


class SiLUFeedForward(nn.Module):
    """w2(silu(w1 x)) without the gate; the experiments give it d_ff = 4 d_model to match SwiGLU's size."""

    def __init__(self, d_model: int, d_ff: int, device=None, dtype=None):
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(silu(self.w1(x)))


# tinylm.architecture.FFNS -> the class TransformerBlock builds.
FEED_FORWARDS: dict[str, type[nn.Module]] = {"swiglu": SwiGLU, "silu": SiLUFeedForward}
