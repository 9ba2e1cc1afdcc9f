"""The divergence rule: when a run's loss has blown up, decided on the device step by step.

A diverged run is a result, not a crash: the trainer marks it `diverged`, keeps the weights from
before its first bad step and stops at the next point where the host reads the device.
"""
from __future__ import annotations

import torch

# The divergence rule (`DivergenceGuard`) reads the training loss smoothed by an
# exponential moving average with this decay, against its largest value over the first steps.
LOSS_SMOOTHING = 0.9
INITIAL_LOSS_STEPS = 10


class DivergenceGuard:
    """Decides on the device, step by step, whether an update is kept; the host reads it later.

    A step is bad when its loss or gradient norm is not finite, or its smoothed loss (an
    exponential moving average, decay `LOSS_SMOOTHING`) exceeds `factor` times the untrained
    model's: the largest smoothed loss of the first `INITIAL_LOSS_STEPS` good steps. A single
    batch is no such reference: the batch losses of an untrained model without any norm vary by
    more than twice between batches, so one batch at twice another's is no divergence. From the
    first bad step on, no update is kept (the weights stay those before it), and `first_bad` holds
    that step's (number, loss, grad norm) until the host reads them (`read()`), which is the only
    time it waits for the device.

    On the CPU the host *is* the device: a verdict costs no wait there, so a bad update is simply
    not made. Elsewhere the verdict goes to the AdamW update as its `keep` flag, which writes the
    old weights and moments back in the same pass.
    """

    def __init__(self, factor: float, device: torch.device, initial_loss: float | None = None,
                 smoothed_loss: float | None = None):
        self.factor = factor
        self.decide_on_host = device.type == "cpu"
        # Both restored from a checkpoint's progress record, so a resumed run judges its steps alike.
        self.initial_loss = None if initial_loss is None else torch.tensor(initial_loss, device=device)
        self.smoothed_loss = None if smoothed_loss is None else torch.tensor(smoothed_loss, device=device)
        self.healthy = torch.ones((), dtype=torch.bool, device=device)
        self.first_bad = torch.zeros(3, dtype=torch.float64, device=device)  # step, loss, grad norm

    def check(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """Fold step `step` (1-based) into the guard; returns the device bool "keep this update"."""
        value = loss.detach().float()
        smoothed = value if self.smoothed_loss is None else \
            LOSS_SMOOTHING * self.smoothed_loss + (1 - LOSS_SMOOTHING) * value
        reference = smoothed if self.initial_loss is None else self.initial_loss
        good = step_is_good(smoothed, grad_norm, reference, self.factor)
        if self.initial_loss is None or step <= INITIAL_LOSS_STEPS:
            self.initial_loss = torch.where(good, torch.maximum(reference, smoothed), reference)
        self.smoothed_loss = smoothed
        newly_bad = self.healthy & ~good
        record = torch.stack([torch.full_like(loss, step, dtype=torch.float64), loss.double(), grad_norm.double()])
        self.first_bad = torch.where(newly_bad, record, self.first_bad)
        self.healthy = self.healthy & good
        return self.healthy

    def read(self) -> tuple[int, float, float] | None:
        """None while every step was good; else the first bad step's (number, loss, grad norm)."""
        if bool(self.healthy):
            return None
        step, loss, grad_norm = self.first_bad.tolist()
        return int(step), loss, grad_norm


def step_is_good(smoothed_loss: torch.Tensor, grad_norm: torch.Tensor, initial_loss: torch.Tensor,
                 factor: float) -> torch.Tensor:
    """The divergence rule, as a device bool: finite (smoothed) loss and norm, and the smoothed loss
    at most factor * initial loss. A non-finite loss makes the smoothed one non-finite too."""
    return torch.isfinite(smoothed_loss) & torch.isfinite(grad_norm) & (smoothed_loss <= factor * initial_loss)


def divergence_outcome(first_bad_step: int, tokens_per_step: int) -> tuple[int, int]:
    """(steps, tokens) a diverged run reports: it ends at its first bad step, whose update was undone."""
    return first_bad_step, (first_bad_step - 1) * tokens_per_step
