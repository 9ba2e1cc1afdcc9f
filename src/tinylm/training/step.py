"""One optimizer step as the trainer runs it, shared by the trainer, the max-batch probe, the memory
prediction and the benchmarks.

Nothing here waits for the device: a `TrainingStep` returns the loss and gradient norm as device
tensors, and its divergence guard decides on the device whether the update is kept, so a step is
queued without the host reading a single number back.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import cast

import torch

from tinylm.nn.functional import cross_entropy, gradient_clipping
from tinylm.optim import AdamW
from tinylm.training.divergence import DivergenceGuard


class ModelLoss(torch.nn.Module):
    """Forward pass in `precision`, then cross-entropy in float32: (inputs, targets) -> mean loss.

    A module, so that DistributedDataParallel and torch.compile can wrap the forward pass and the
    loss together."""

    def __init__(self, model: torch.nn.Module, precision: Callable[[], AbstractContextManager]):
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with self.precision():
            logits = self.model(inputs)            # (batch, context, vocab)
        return cross_entropy(logits, targets)      # float32 scalar


def compile_static(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile for a run's shapes, which never change (evaluation batches are padded to the
    training batch's), so no dynamic-shape graph is ever worth its cost."""
    # A module compiles to a module (OptimizedModule); torch annotates the result as a bare callable.
    return cast(torch.nn.Module, torch.compile(module, dynamic=False))


class TrainingStep:
    """One optimizer step as the trainer runs it: forward and loss (eager, or compiled as one graph so
    that inductor fuses the loss with the output layer instead of the logits crossing a graph
    boundary in memory), backward, clipping, and the AdamW update, kept or not as the divergence
    guard decides.

    `model` is the bare model: clipping and the update see its parameters. `wrap` (distributed runs:
    DistributedDataParallel) wraps forward and loss before they are compiled, so that dynamo splits
    the graph at DDP's gradient buckets and their all-reduce overlaps the backward pass (torch's
    recommended order: compile over DDP, not DDP over a compiled model). `reduce_loss` turns this
    process's loss into the global batch's, so every process's guard sees the same numbers.
    """

    def __init__(self, model: torch.nn.Module, optimizer: AdamW,
                 precision: Callable[[], AbstractContextManager], grad_clip: float,
                 guard: DivergenceGuard | None = None,
                 compiled: bool = False, wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                 reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.model, self.optimizer, self.guard, self.reduce_loss = model, optimizer, guard, reduce_loss
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        loss_fn: torch.nn.Module = ModelLoss(model, precision)
        if wrap is not None:
            loss_fn = wrap(loss_fn)
        self.loss_fn = compile_static(loss_fn) if compiled else loss_fn

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Step number `step` (1-based) on this batch; returns (loss, grad norm before clipping) on the device."""
        loss = self.loss_fn(inputs, targets)
        loss.backward()
        grad_norm = gradient_clipping(self.model.parameters(), self.max_norm)
        loss = loss.detach()
        if self.reduce_loss is not None:
            loss = self.reduce_loss(loss)
        if self.guard is None:
            self.optimizer.step()
        elif self.guard.decide_on_host:
            if self.guard.check(step, loss, grad_norm):
                self.optimizer.step()
        else:
            self.optimizer.step(keep=self.guard.check(step, loss, grad_norm))
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm
