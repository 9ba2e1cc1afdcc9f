"""The Transformer language model: embeddings, a stack of blocks, a final norm and the LM head.

Architecture variants (keyword arguments of TransformerBlock and TransformerLM):
- norm="pre" (default): x + f(norm(x)), with a final norm before the head.
  norm="post": norm(x + f(x)), no final norm (the last block's output is already normalised).
  norm="none": x + f(x), no norm modules at all.
- position="rope" (default) or "none" (NoPE: no positional information beyond the causal mask).
- ffn="swiglu" (default) or "silu" (two-matrix SiLU MLP).
"""
from __future__ import annotations

import torch
from torch import nn

from tinylm.architecture import FFNS, NORMS, POSITIONS, check_choice
from tinylm.nn.attention import KVCache, MultiHeadSelfAttention, RotaryPositionalEmbedding
from tinylm.nn.ffn import FEED_FORWARDS
from tinylm.nn.layers import Embedding, Linear, RMSNorm


class TransformerBlock(nn.Module):
    """Attention then feed-forward, each wrapped in a residual connection (and norms per `norm`)."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, max_seq_len: int, theta: float,
                 norm: str = "pre", position: str = "rope", ffn: str = "swiglu",
                 attention: str = "reference", device=None, dtype=None):
        super().__init__()
        check_choice("norm", norm, NORMS)
        check_choice("position", position, POSITIONS)
        check_choice("ffn", ffn, FFNS)
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.norm = norm
        rope = None
        if position == "rope":
            rope = RotaryPositionalEmbedding(theta, d_model // num_heads, max_seq_len, device=device, dtype=dtype)
        self.ln1 = RMSNorm(d_model, device=device, dtype=dtype) if norm != "none" else None
        self.attn = MultiHeadSelfAttention(d_model, num_heads, rope=rope, attention=attention,
                                           device=device, dtype=dtype)
        self.ln2 = RMSNorm(d_model, device=device, dtype=dtype) if norm != "none" else None
        self.ffn = FEED_FORWARDS[ffn](d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, token_positions: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        """x: (..., seq, d_model) -> (..., seq, d_model)."""
        if self.norm == "pre":
            assert self.ln1 is not None and self.ln2 is not None  # made for every norm but "none"
            x = x + self.attn(self.ln1(x), token_positions, kv_cache)
            return x + self.ffn(self.ln2(x))
        if self.norm == "post":
            assert self.ln1 is not None and self.ln2 is not None
            x = self.ln1(x + self.attn(x, token_positions, kv_cache))
            return self.ln2(x + self.ffn(x))
        x = x + self.attn(x, token_positions, kv_cache)
        return x + self.ffn(x)


class TransformerLM(nn.Module):
    """Token ids (..., seq) -> next-token logits (..., seq, vocab_size)."""

    def __init__(self, vocab_size: int, context_length: int, d_model: int, num_layers: int,
                 num_heads: int, d_ff: int, rope_theta: float, norm: str = "pre",
                 position: str = "rope", ffn: str = "swiglu", attention: str = "reference",
                 device=None, dtype=None):
        super().__init__()
        self.vocab_size, self.context_length = vocab_size, context_length
        self.token_embeddings = Embedding(vocab_size, d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(
            TransformerBlock(d_model, num_heads, d_ff, context_length, rope_theta, norm=norm,
                             position=position, ffn=ffn, attention=attention, device=device, dtype=dtype)
            for _ in range(num_layers))
        self.ln_final = RMSNorm(d_model, device=device, dtype=dtype) if norm == "pre" else None
        self.lm_head = Linear(d_model, vocab_size, device=device, dtype=dtype)

    def forward(self, token_ids: torch.Tensor, kv_cache: list[KVCache] | None = None) -> torch.Tensor:
        """With `kv_cache` (from new_kv_cache), token_ids are the positions after those cached."""
        start = kv_cache[0].length if kv_cache is not None else 0
        if start + token_ids.shape[-1] > self.context_length:
            raise ValueError(f"sequence of {start + token_ids.shape[-1]} tokens exceeds "
                             f"context_length={self.context_length}")
        x = self.token_embeddings(token_ids)  # (..., seq, d_model)
        for i, layer in enumerate(self.layers):
            x = layer(x, kv_cache=kv_cache[i] if kv_cache is not None else None)
        if self.ln_final is not None:
            x = self.ln_final(x)
        return self.lm_head(x)  # (..., seq, vocab_size)

    def new_kv_cache(self) -> list[KVCache]:
        """Empty per-layer caches of context_length positions, for incremental decoding."""
        return [KVCache(self.context_length) for _ in self.layers]


def build_model(model_config, attention: str = "reference", device=None, dtype=None) -> TransformerLM:
    """The TransformerLM described by a tinylm.config.ModelConfig."""
    c = model_config
    return TransformerLM(c.vocab_size, c.context_length, c.d_model, c.num_layers, c.num_heads, c.d_ff,
                         c.rope_theta, **c.variant(), attention=attention, device=device, dtype=dtype)
