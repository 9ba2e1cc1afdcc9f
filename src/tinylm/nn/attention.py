"""Causal multi-head self-attention with rotary position embeddings and an optional KV cache."""
from __future__ import annotations

import torch
from torch import nn

from tinylm.architecture import ATTENTIONS, check_choice
from tinylm.nn.functional import scaled_dot_product_attention, softmax
from tinylm.nn.layers import Linear


class RotaryPositionalEmbedding(nn.Module):
    """Rotate adjacent pairs (x[2k], x[2k+1]) by angle pos * theta^(-2k / d_k).

    As x * cos + swap_pairs(x) * signed_sin, with per-position tables laid out like x:
    cos = [c0, c0, c1, c1, ...] and signed_sin = [-s0, s0, -s1, s1, ...]. Written this way the
    backward pass needs no zero-filled gradient buffers (as slicing out evens and odds would).
    The tables are buffers (not saved in the state dict: they follow from theta, d_k, max_seq_len).
    """
    cos: torch.Tensor
    signed_sin: torch.Tensor

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None, dtype=None):
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE needs an even dimension, got d_k={d_k}")
        self.theta, self.d_k, self.max_seq_len = theta, d_k, max_seq_len
        frequencies = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float64) / d_k)  # (d_k/2,)
        angles = torch.outer(torch.arange(max_seq_len, device=device, dtype=torch.float64), frequencies)
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # angles need >= fp32
        cos = torch.cos(angles).repeat_interleave(2, dim=-1)                          # (max_seq_len, d_k)
        signed_sin = torch.stack((-torch.sin(angles), torch.sin(angles)), dim=-1).flatten(-2)
        self.register_buffer("cos", cos.to(table_dtype), persistent=False)
        self.register_buffer("signed_sin", signed_sin.to(table_dtype), persistent=False)

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor) -> torch.Tensor:
        """x: (..., seq, d_k); token_positions: (seq,) or (..., seq), broadcast against x's leading dims."""
        cos, signed_sin = self.cos[token_positions], self.signed_sin[token_positions]  # (..., seq, d_k)
        if torch.compiler.is_compiling():  # inductor fuses these into one kernel; it generates no complex code
            swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0, x3, x2, ...)
            return (x * cos + swapped * signed_sin).to(x.dtype)
        # Eager, each pair times e^(i angle) as one complex multiplication is one pass over x,
        # forward and backward, where the sum above is five.
        pairs = torch.view_as_complex(x.to(torch.promote_types(x.dtype, cos.dtype)).unflatten(-1, (-1, 2)))
        rotations = torch.complex(cos[..., 0::2], signed_sin[..., 1::2])
        return torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype)

    def extra_repr(self) -> str:
        return f"theta={self.theta}, d_k={self.d_k}, max_seq_len={self.max_seq_len}"


class KVCache:
    """Keys and values of one attention layer for the positions processed so far (generation).

    Buffers of `capacity` positions are allocated on the first append, in the dtype of the keys.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.keys: torch.Tensor | None = None    # (..., heads, capacity, d_head)
        self.values: torch.Tensor | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (..., heads, new, d_head) keys/values; return all keys/values so far."""
        new = keys.shape[-2]
        if self.length + new > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; cannot add {new} to {self.length}")
        if self.keys is None:
            shape = (*keys.shape[:-2], self.capacity, keys.shape[-1])
            self.keys = keys.new_empty(shape)
            self.values = values.new_empty(shape)
        assert self.values is not None  # allocated with the keys
        self.keys[..., self.length:self.length + new, :] = keys
        self.values[..., self.length:self.length + new, :] = values
        self.length += new
        return self.keys[..., :self.length, :], self.values[..., :self.length, :]


def causal_mask(num_queries: int, num_keys: int, device=None) -> torch.Tensor:
    """(queries, keys) bool, True where key j may be seen by query i; the queries are the last positions."""
    query_positions = torch.arange(num_keys - num_queries, num_keys, device=device)
    return torch.arange(num_keys, device=device)[None, :] <= query_positions[:, None]


class MultiHeadSelfAttention(nn.Module):
    """Causal self-attention; q/k/v projections hold all heads stacked along the output dimension.

    `attention="fused"` computes the same thing with torch's scaled_dot_product_attention kernel
    (flash / memory-efficient), on the CPU in bf16 with torch's softmax kernel; "reference" uses
    tinylm.nn.functional.
    """

    def __init__(self, d_model: int, num_heads: int, rope: RotaryPositionalEmbedding | None = None,
                 attention: str = "reference", device=None, dtype=None):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        check_choice("attention", attention, ATTENTIONS)
        self.d_model, self.num_heads, self.d_head = d_model, num_heads, d_model // num_heads
        self.rope = rope
        self.attention = attention
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """x: (..., seq, d_model) -> (..., seq, d_model).

        token_positions defaults to 0..seq-1, or continues after the cached positions.
        """
        seq = x.shape[-2]
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        start = kv_cache.length if kv_cache is not None else 0
        if self.rope is not None:
            if token_positions is None:
                token_positions = torch.arange(start, start + seq, device=x.device)
            elif token_positions.dim() > 1:
                token_positions = token_positions.unsqueeze(-2)  # (..., 1, seq): same for every head
            q, k = self.rope(q, token_positions), self.rope(k, token_positions)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)  # (..., heads, start + seq, d_head)
        out = self._attend(q, k, v)  # (..., heads, seq, d_head)
        return self.output_proj(out.transpose(-3, -2).flatten(-2))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(..., seq, d_model) -> (..., heads, seq, d_head)."""
        return x.unflatten(-1, (self.num_heads, self.d_head)).transpose(-3, -2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        num_queries, num_keys = q.shape[-2], k.shape[-2]
        # On the CPU under bf16, fused attention is bf16 matmuls around torch's softmax, holding every
        # score at once: the CPU flash kernel is not faster there (benchmarks/results/cpu_kernels.md
        # times both kernels, in both precisions, at the default and the reference size).
        cpu_bf16 = q.device.type == "cpu" and q.dtype == torch.bfloat16
        if self.attention == "fused" and not cpu_bf16:
            if num_queries == num_keys:
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            if num_queries == 1:  # one new token after the cache: it sees every key
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
            mask = causal_mask(num_queries, num_keys, device=q.device)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        mask = causal_mask(num_queries, num_keys, device=q.device)
        return scaled_dot_product_attention(q, k, v, mask,
                                            softmax=torch.softmax if self.attention == "fused" else softmax)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, attention={self.attention!r}"
