"""Transformer language model built from tensor operations (see API.md for the contract).

    from tinylm.nn import build_model
    model = build_model(run_config.model, attention="fused")   # TransformerLM
    logits = model(token_ids)                                  # (batch, seq) -> (batch, seq, vocab)
"""
from tinylm.nn.attention import KVCache, MultiHeadSelfAttention, RotaryPositionalEmbedding
from tinylm.nn.ffn import SiLUFeedForward, SwiGLU
from tinylm.nn.flops import (
    forward_flops_per_token,
    model_flops_utilization,
    parameter_count,
    training_flops_per_token,
)
from tinylm.nn.layers import Embedding, Linear, RMSNorm
from tinylm.nn.transformer import TransformerBlock, TransformerLM, build_model

__all__ = [
    "Linear", "Embedding", "RMSNorm", "SwiGLU", "SiLUFeedForward", "RotaryPositionalEmbedding",
    "MultiHeadSelfAttention", "KVCache", "TransformerBlock", "TransformerLM", "build_model",
    "parameter_count", "forward_flops_per_token", "training_flops_per_token",
    "model_flops_utilization",
]
