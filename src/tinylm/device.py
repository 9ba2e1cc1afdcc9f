"""Devices, precision, peak FLOP/s and one optimizer step: what training, evaluation and generation share.

Nothing here waits for the device: a `TrainingStep` returns the loss and gradient norm as device
tensors, and its divergence guard decides on the device whether the update is kept, so a step is
queued without the host reading a single number back.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import platform
import re
from typing import Callable, ContextManager

import torch

from tinylm.nn.functional import cross_entropy, gradient_clipping
from tinylm.stopping import INITIAL_LOSS_STEPS, LOSS_SMOOTHING


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda, then mps, then cpu; each process of a multi-GPU run takes its own GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("training.device: cuda requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("training.device: mps requested but MPS is not available")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait until the device has run everything queued (a no-op on the CPU, which runs it in order)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def keep_freed_host_memory() -> bool:
    """Ask the C allocator (glibc malloc) to keep freed memory for reuse, as PyTorch's CUDA allocator
    does on the GPU; returns whether it agreed (False where there is no glibc).

    A CPU training step frees and reallocates the same activation buffers every step. By default
    glibc hands large buffers back to the OS, and each comes back through a page fault per 4 KiB:
    at the default config's size, on one thread of the development VM, a multiplication into a
    fresh (1024, 2000) float32 buffer took 3.4 ms where a subtraction in place took 0.2 ms.
    Buffers up to 32 MiB (glibc's limit) now stay in the process, whose memory stays at its peak,
    which a training step reaches every step anyway.
    """
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def autocast_context(device: torch.device, precision: str) -> Callable[[], ContextManager]:
    """A factory of the context the forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def use_compile(setting: bool | str, device: torch.device) -> bool:
    """`training.compile`: true/false as given; `auto` compiles on CUDA only.

    On the CPU, measured on the development machine (2-core AMD EPYC VM, 1 thread, load average
    1.2, torch 2.13) for the default config's baseline run (700 steps at batch 8, bf16;
    benchmarks/bench_compile.py), the whole `tinylm train` took 66 s eager, 150 s
    compiled (model, loss and AdamW update) with an empty compile cache and 69 s with a warm one:
    even warm, tracing and loading the compiled graphs cost what their faster steps save. Half of
    the default config's runs have a shape or architecture of their own (batch sizes, norm,
    position and FFN variants), so they would compile cold: `auto` leaves the CPU eager.
    """
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def device_name(device: torch.device) -> str:
    """The accelerator's marketing name, or the CPU model (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.processor() or platform.machine()})"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


# ---- peak FLOP/s, for model FLOPs utilisation (MFU) ------------------------------------------

# Dense (no structured sparsity) tensor-core peaks from the vendors' datasheets, in FLOP/s, per GPU:
# (bf16, fp32). "fp32" is the TF32 tensor-core peak, the rate fp32 matmuls run at on NVIDIA GPUs
# under torch.set_float32_matmul_precision("high"), which the trainer sets on CUDA. Datasheets
# often print the sparse figure, twice these. Patterns are tried in order; the first match wins.
PEAK_FLOPS: list[tuple[str, str, float, float | None]] = [
    # (pattern on torch.cuda.get_device_name, GPU, bf16, fp32 as TF32)
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 756e12, 378e12),
    (r"\bH100 NVL\b", "H100 NVL", 835e12, 417.5e12),
    (r"\bH100\b", "H100 SXM", 989.4e12, 494.7e12),
    (r"\bH200 NVL\b", "H200 NVL", 835e12, 417.5e12),
    (r"\bH200\b", "H200 SXM", 989.4e12, 494.7e12),
    (r"\bB200\b", "B200", 2250e12, 1125e12),
    (r"\bA100\b", "A100", 312e12, 156e12),
    (r"\bL40S\b", "L40S", 362.05e12, 183.2e12),
    (r"\bL4$", "L4", 121e12, 60e12),
    (r"\bA10$", "A10", 125e12, 62.5e12),
    (r"\bRTX 4090$", "GeForce RTX 4090", 165.2e12, 82.6e12),   # bf16 with fp32 accumulate
    (r"\bRTX 3090$", "GeForce RTX 3090", 71e12, 35.6e12),      # bf16 with fp32 accumulate
    # ROCm: whether fp32 matmuls use the TF32-like path depends on the build, so fp32 stays unknown.
    (r"\bMI300X\b", "Instinct MI300X", 1307.4e12, None),
]


def peak_flops(name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one GPU called `name` (torch.cuda.get_device_name) at `precision`;
    None for a GPU not in the table (or a CPU): no MFU is better than a wrong one."""
    for pattern, _, bf16, fp32 in PEAK_FLOPS:
        if re.search(pattern, name.strip(), flags=re.IGNORECASE):
            return bf16 if precision == "bf16" else fp32
    return None


# ---- one optimizer step ---------------------------------------------------------------------

class DivergenceGuard:
    """Decides on the device, step by step, whether an update is kept; the host reads it later.

    A step is bad when its loss or gradient norm is not finite, or its smoothed loss (an
    exponential moving average, decay `LOSS_SMOOTHING`) exceeds `factor` times the untrained
    model's: the largest smoothed loss of the first `INITIAL_LOSS_STEPS` good steps. A single
    batch is no such reference: the untrained default model without any norm has batch losses
    from 14 to 62 in its first 30 steps, so one batch at twice another's is no divergence. From the
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


class ModelLoss(torch.nn.Module):
    """Forward pass in `precision`, then cross-entropy in float32: (inputs, targets) -> mean loss.

    A module, so that DistributedDataParallel and torch.compile can wrap the forward pass and the
    loss together."""

    def __init__(self, model: torch.nn.Module, precision: Callable[[], ContextManager]):
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with self.precision():
            logits = self.model(inputs)            # (batch, context, vocab)
        return cross_entropy(logits, targets)      # float32 scalar


def compile_static(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile for a run's shapes, which never change (evaluation batches are padded to the
    training batch's), so no dynamic-shape graph is ever worth its cost."""
    return torch.compile(module, dynamic=False)


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

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 precision: Callable[[], ContextManager], grad_clip: float, guard: DivergenceGuard | None = None,
                 compiled: bool = False, wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                 reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.model, self.optimizer, self.guard, self.reduce_loss = model, optimizer, guard, reduce_loss
        self.max_norm = grad_clip if grad_clip > 0 else math.inf
        loss_fn = ModelLoss(model, precision)
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
