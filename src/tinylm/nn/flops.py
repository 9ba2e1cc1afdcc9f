"""Parameter count and FLOPs per token of a TransformerLM, computed from its ModelConfig.

FLOPs count matrix multiplications only (2 per multiply-add); norms, activations and softmax are
a few percent at these sizes and are left out, as in the usual 6N accounting. Attention scores
count every query against the full context (no halving for the causal mask), the convention of
the PaLM paper's model FLOPs utilisation (MFU).
"""
from __future__ import annotations


def _ffn_matrices(model_config) -> int:
    return 3 if model_config.ffn == "swiglu" else 2


def parameter_count(model_config, include_embedding: bool = True) -> int:
    """Trainable parameters of build_model(model_config); without the token embedding table if asked."""
    c = model_config
    norms_per_layer = 0 if c.norm == "none" else 2
    per_layer = 4 * c.d_model ** 2 + _ffn_matrices(c) * c.d_model * c.d_ff + norms_per_layer * c.d_model
    final_norm = c.d_model if c.norm == "pre" else 0
    embedding = c.vocab_size * c.d_model if include_embedding else 0
    return embedding + c.num_layers * per_layer + final_norm + c.d_model * c.vocab_size


def forward_flops_per_token(model_config, seq_len: int | None = None) -> int:
    """Matmul FLOPs of one forward pass per token, at sequence length `seq_len` (default: the context)."""
    c = model_config
    seq_len = c.context_length if seq_len is None else seq_len
    projections = 2 * 4 * c.d_model ** 2                   # q, k, v, output
    attention = 2 * 2 * seq_len * c.d_model                # Q K^T and (scores) V, all heads
    ffn = 2 * _ffn_matrices(c) * c.d_model * c.d_ff
    return c.num_layers * (projections + attention + ffn) + 2 * c.d_model * c.vocab_size


def training_flops_per_token(model_config, seq_len: int | None = None) -> int:
    """Forward plus backward (twice the forward: gradients of inputs and of weights)."""
    return 3 * forward_flops_per_token(model_config, seq_len)


def model_flops_utilization(tokens_per_s: float, model_config, peak_flops: float) -> float:
    """Fraction of the accelerator's peak that the training throughput amounts to (MFU)."""
    return tokens_per_s * training_flops_per_token(model_config) / peak_flops
