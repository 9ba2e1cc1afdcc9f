"""AdamW and the cosine learning-rate schedule, written from scratch.

AdamW follows API.md: the bias-corrected Adam step, then decoupled weight decay
p -= lr * weight_decay * p. (torch.optim.AdamW decays before the Adam step; the two differ by
lr^2 * weight_decay * update, far below float32 resolution at the learning rates used here, and
are identical without weight decay.)

The bias corrections are folded into the step size and eps on the host, in float64:

    lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
        = [lr * sqrt(1 - beta2^t) / (1 - beta1^t)] * m / (sqrt(v) + [eps * sqrt(1 - beta2^t)])

so no pass over the parameters applies a correction. Eager, the update runs over all parameters of
a group at once with torch._foreach_* kernels, the square roots going into a denominator buffer
kept from step to step instead of tensors allocated afresh at every step; compiled
(`AdamW(..., compiled=True)`, what the trainer does when it compiles), inductor fuses the whole
update of a parameter into one pass over its weights, gradient and moments
(benchmarks/bench_train.py times both).

`step(keep=...)` takes a device bool that decides whether the update is kept: the divergence guard's
verdict, known only on the device. The update then writes the old weights and moments back where
`keep` is false, in the same pass (fused, when compiled): a rejected step changes neither weights
nor moments (only the step count advances; the trainer stops a run at its first rejected step), and
the host never waits for the verdict.
"""
from __future__ import annotations

import math
from typing import cast

import torch


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay. State per parameter: step (an int), exp_avg, exp_avg_sq.

    `compiled` runs the update through torch.compile: the learning rate and step count reach the
    graph as 0-dim tensors, so it is compiled once, not at every new learning rate or step.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, compiled: bool = False):
        if not lr >= 0:
            raise ValueError(f"AdamW: lr must be non-negative, got {lr}")
        if not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"AdamW: betas must be in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"AdamW: eps must be positive, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"AdamW: weight_decay must be non-negative, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        # Kept out of self.state, so checkpoints carry only the moments and step counts.
        self._denominators: dict[torch.Tensor, torch.Tensor] = {}
        # Parameter shapes never change within a run, so no dynamic-shape graph is worth its cost.
        self._fused_update = torch.compile(fused_update, dynamic=False) if compiled else None

    @classmethod
    def from_config(cls, params, config, compiled: bool = False) -> AdamW:
        """From a `tinylm.config.OptimizerConfig` (its lr, betas, eps and weight_decay)."""
        return cls(params, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay,
                   compiled=compiled)

    @torch.no_grad()
    def step(self, closure=None, keep: torch.Tensor | None = None):
        """One update of every parameter with a gradient; with `keep` (a 0-dim bool tensor on the
        parameters' device) the update is made only where it is true."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update_group(group, params, keep)
        return loss

    def _update_group(self, group: dict, params: list[torch.Tensor], keep: torch.Tensor | None) -> None:
        # One update per step count, device and dtype: each shares its scalars (and one compiled graph).
        batches: dict[tuple[int, torch.device, torch.dtype], list[torch.Tensor]] = {}
        for p in params:
            assert p.grad is not None  # step() passes only the parameters with a gradient
            if p.grad.is_sparse:
                raise ValueError("AdamW does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            batches.setdefault((state["step"], p.device, p.dtype), []).append(p)
        beta1, beta2 = group["betas"]
        for (step, device, dtype), batch in batches.items():
            grads = cast(list[torch.Tensor], [p.grad for p in batch])  # none is None (above)
            tensors = (batch, grads, [self.state[p]["exp_avg"] for p in batch],
                       [self.state[p]["exp_avg_sq"] for p in batch])
            scalars = corrected_scalars(group["lr"], beta1, beta2, group["eps"], group["weight_decay"], step)
            if self._fused_update is None and keep is None:
                foreach_update(*tensors, self._denominators_of(batch), *scalars, beta1, beta2)
                continue
            scalar_dtype = torch.promote_types(dtype, torch.float32)
            # Made on the device (not copied there), so the host never waits for them.
            step_size, eps, decay = (torch.full((), value, dtype=scalar_dtype, device=device) for value in scalars)
            if keep is None:
                keep = torch.ones((), dtype=torch.bool, device=device)
            (self._fused_update or fused_update)(*tensors, step_size, eps, decay, beta1, beta2, keep)

    def _denominators_of(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        for p in params:
            if p not in self._denominators:
                self._denominators[p] = torch.empty_like(p, memory_format=torch.preserve_format)
        return [self._denominators[p] for p in params]


def corrected_scalars(lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                      step: int) -> tuple[float, float, float]:
    """(step size, eps, decay factor) of step `step` with the bias corrections folded in."""
    root_correction2 = math.sqrt(1 - beta2 ** step)
    return lr * root_correction2 / (1 - beta1 ** step), eps * root_correction2, 1 - lr * weight_decay


def foreach_update(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                   exp_avg_sqs: list[torch.Tensor], denominators: list[torch.Tensor], step_size: float,
                   eps: float, decay: float, beta1: float, beta2: float) -> None:
    """The eager update: one foreach kernel per pass, none of them allocating."""
    # m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    # torch._foreach_sqrt allocates its results, and its out= overload is that plus a copy (slower).
    for exp_avg_sq, denominator in zip(exp_avg_sqs, denominators):
        torch.sqrt(exp_avg_sq, out=denominator)
    torch._foreach_add_(denominators, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denominators, -step_size)
    if decay != 1:
        torch._foreach_mul_(params, decay)


def fused_update(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                 exp_avg_sqs: list[torch.Tensor], step_size: torch.Tensor, eps: torch.Tensor,
                 decay: torch.Tensor, beta1: float, beta2: float, keep: torch.Tensor) -> None:
    """The same update as plain per-tensor ops, for torch.compile to fuse into one loop per parameter
    (the scalars that change from step to step are 0-dim tensors, inputs of the graph), each value
    written back only where `keep` is true. Run eagerly, it is the guarded update of an uncompiled run."""
    for param, grad, exp_avg, exp_avg_sq in zip(params, grads, exp_avgs, exp_avg_sqs):
        new_avg = exp_avg.lerp(grad, 1 - beta1)
        new_avg_sq = (exp_avg_sq * beta2).addcmul_(grad, grad, value=1 - beta2)
        new_param = (param - step_size * new_avg / (new_avg_sq.sqrt() + eps)) * decay
        # A rejected step may hold non-finite gradients: select, never scale by 0 (0 * inf is nan).
        exp_avg.copy_(torch.where(keep, new_avg, exp_avg))
        exp_avg_sq.copy_(torch.where(keep, new_avg_sq, exp_avg_sq))
        param.copy_(torch.where(keep, new_param, param))


def cosine_lr(it: int, max_learning_rate: float, min_learning_rate: float, warmup_iters: int,
              cosine_cycle_iters: int) -> float:
    """Linear warm-up to max over warmup_iters, cosine down to min at step cosine_cycle_iters, then min."""
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it <= cosine_cycle_iters:
        progress = (it - warmup_iters) / max(1, cosine_cycle_iters - warmup_iters)
        return min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (max_learning_rate - min_learning_rate)
    return min_learning_rate
