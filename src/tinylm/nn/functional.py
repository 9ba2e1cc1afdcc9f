"""Stateless building blocks of the Transformer, written with plain tensor operations.

The reference implementation deliberately avoids `torch.nn.functional`: each function here is the
textbook formula, made numerically stable where it matters (softmax and cross-entropy subtract the
maximum before exponentiating).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """exp(x) / sum(exp(x)) along `dim`, shifted by the maximum so exp never overflows.

    The shift is detached: softmax does not change when a constant is subtracted, so its gradient
    through the maximum is zero, and autograd need not compute it.
    """
    shifted = x - x.amax(dim=dim, keepdim=True).detach()
    exps = torch.exp(shifted)
    return exps / exps.sum(dim=dim, keepdim=True)


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), a.k.a. swish."""
    return x * torch.sigmoid(x)


def scaled_dot_product_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor,
                                 mask: torch.Tensor | None = None,
                                 softmax: Callable[[torch.Tensor, int], torch.Tensor] = softmax) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) V.

    Q: (..., queries, d_k), K: (..., keys, d_k), V: (..., keys, d_v) -> (..., queries, d_v).
    mask: bool, broadcastable to (..., queries, keys); True = may attend. A query whose keys are all
    masked would divide 0 by 0; causal masks never do that (every query sees itself).
    `softmax` may be swapped for a faster one of the same signature (torch.softmax).
    """
    scores = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])  # (..., queries, keys)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return softmax(scores, -1) @ V


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of `targets` under softmax(`logits`), in at least float32.

    logits: (..., vocab), targets: (...) integer ids -> scalar. Uses log-sum-exp, so large logits
    neither overflow nor lose precision; low-precision (bf16) logits are upcast first, and their
    gradient comes back in their dtype.
    """
    return _CrossEntropy.apply(logits, targets)


class _CrossEntropy(torch.autograd.Function):
    """Cross-entropy with its gradient written out: d loss / d logits = (softmax - one_hot) / N.

    One buffer goes from upcast logits to shifted logits to their exponentials, which the backward
    pass turns into the gradient. Autograd of the formula would allocate a (..., vocab) tensor per
    operation, and at the default config's size those allocations and their page faults cost more
    than the arithmetic.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # log softmax(x)_t = (x_t - m) - log(sum(exp(x - m))) for any m; m = max keeps exp <= 1.
        exps = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)  # (..., vocab)
        exps.sub_(exps.amax(dim=-1, keepdim=True))
        target_logits = exps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...)
        sums = exps.exp_().sum(dim=-1)                                      # (...)
        ctx.save_for_backward(exps, sums, targets)
        ctx.logits_dtype = logits.dtype
        return (torch.log(sums) - target_logits).mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None]:
        exps, sums, targets = ctx.saved_tensors
        scale = grad_loss / targets.numel()
        grad = exps * (scale / sums).unsqueeze(-1)  # softmax * scale; exps stays intact for a second backward
        grad.scatter_add_(-1, targets.unsqueeze(-1), (-scale).expand(targets.shape).unsqueeze(-1).to(grad.dtype))
        return grad.to(ctx.logits_dtype), None


@torch.no_grad()
def gradient_clipping(parameters: Iterable[torch.nn.Parameter], max_l2_norm: float,
                      eps: float = 1e-6) -> torch.Tensor:
    """Scale all gradients in place so their global L2 norm is at most `max_l2_norm`.

    Returns the global norm before clipping (a 0-d tensor, for logging). The scale factor
    max / (norm + eps) is clamped at 1 instead of branching on the norm, so no device sync is needed.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norms = torch._foreach_norm(grads, 2)
    total_norm = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2)
    scale = (max_l2_norm / (total_norm + eps)).clamp(max=1.0)
    torch._foreach_mul_(grads, scale.to(grads[0].device))
    return total_norm
