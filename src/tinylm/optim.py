"""AdamW and the cosine learning-rate schedule, written from scratch.

AdamW follows API.md: the bias-corrected Adam step, then decoupled weight decay
p -= lr * weight_decay * p. (torch.optim.AdamW decays before the Adam step; the two differ by
lr^2 * weight_decay * update, far below float32 resolution at the learning rates used here, and
are identical without weight decay.) The update runs over all parameters of a group at once with
torch._foreach_* kernels, the way torch's own "foreach" implementation does.
"""
from __future__ import annotations

import math

import torch


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay. State per parameter: step, exp_avg, exp_avg_sq."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        if not lr >= 0:
            raise ValueError(f"AdamW: lr must be non-negative, got {lr}")
        if not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"AdamW: betas must be in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"AdamW: eps must be positive, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"AdamW: weight_decay must be non-negative, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @classmethod
    def from_config(cls, params, config) -> "AdamW":
        """From a `tinylm.config.OptimizerConfig` (its lr, betas, eps and weight_decay)."""
        return cls(params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params)
        return loss

    def _update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, (beta1, beta2), eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        grads, exp_avgs, exp_avg_sqs, steps = [], [], [], []
        for p in params:
            if p.grad.is_sparse:
                raise ValueError("AdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])

        # m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        # p <- p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)
        step_sizes = [-lr / (1 - beta1 ** t) for t in steps]
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, [math.sqrt(1 - beta2 ** t) for t in steps])
        torch._foreach_add_(denominators, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denominators, step_sizes)
        if weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)


def cosine_lr(it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int,
              cosine_cycle_iters: int) -> float:
    """Linear warm-up to max over warmup_iters, cosine down to min at step cosine_cycle_iters, then min."""
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it <= cosine_cycle_iters:
        progress = (it - warmup_iters) / max(1, cosine_cycle_iters - warmup_iters)
        return min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (max_learning_rate - min_learning_rate)
    return min_learning_rate
