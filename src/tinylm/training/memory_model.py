"""Peak tensor memory of one training step, predicted before the run.

    prediction = predict_step_memory(config, "cuda")          # MemoryPrediction
    prediction.peak_bytes, prediction.method, prediction.parts
    largest_fitting_batch(config, "cuda", 80 * 2**30)         # 0 if not even batch 1 fits

The step is the trainer's, eager: the model `build_model` makes, its forward pass under the run's
autocast, cross-entropy, backward, gradient clipping, the AdamW update and `zero_grad`, in steady
state (from the second step on, once the optimizer state exists); in a run over several devices,
one process's step on its share of the batch. The peak is the largest total of tensor storage
bytes alive on the device at any moment of the step. A compiled step (`training.compile`) usually
needs less: inductor fuses operators and keeps fewer intermediates, and the compiled AdamW update
keeps no denominator buffer. On a GPU, what `nvidia-smi` shows adds the CUDA context, library
workspaces and the caching allocator's free blocks on top.

Two methods, both for a device type rather than a device, so a plan can be made on a login node:

- "fake": the step itself, run on fake tensors (torch's FakeTensorMode: each operator computes
  only the shapes of its results), with a dispatch mode counting the bytes of the storages alive.
  It runs the very code the trainer runs, so each path (attention kernel, autocast casts, what
  autograd saves) is the real one. Used on the CPU, and on CUDA where torch can run CUDA operators
  (a GPU is present: CUDA autocast and attention kernel choice need one).
- "analytic": the same step as a list of stages (norms, attention, feed-forward, head, loss), each
  with the bytes its forward pass keeps for the backward pass, the most its backward pass holds at
  once and the gradients it leaves; the peak is then found by walking the backward pass. It follows
  the attention path each (device type, precision, attention) takes, the architecture variants and
  the optimizer's state; used where tracing is not possible, and validated against measurements on
  the CPU by the tests.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tinylm.config import ModelConfig, RunConfig
from tinylm.nn import build_model, parameter_count
from tinylm.optim import AdamW
from tinylm.training.divergence import DivergenceGuard
from tinylm.training.hardware import autocast_context
from tinylm.training.step import TrainingStep

FLOAT32 = 4  # bytes per element
BFLOAT16 = 2
INT64 = 8

# The keys of MemoryPrediction.parts, which add up to peak_bytes.
PARTS = ("parameters", "optimizer_state", "other_state", "activations", "backward")


@dataclass(frozen=True)
class MemoryPrediction:
    """Peak tensor memory of one eager training step, and what is alive at that moment.

    parts: parameters; optimizer_state (AdamW's moments, and on the CPU its denominators); other_state
    (the batch, the RoPE tables, and in a run over several devices DistributedDataParallel's gradient
    buckets); activations (what the forward pass made and still holds); backward (gradients and
    temporaries of the backward pass and update).
    """

    peak_bytes: int
    method: str  # "fake" (traced with fake tensors) or "analytic"
    parts: dict[str, int]


def predict_step_memory(config: RunConfig, device_type: str, batch_size: int | None = None) -> MemoryPrediction:
    """Peak memory of `config`'s training step on a `device_type` device ("cpu", "cuda", "mps").

    `batch_size` is the batch of one device (default: the run's global batch split over its devices).
    Traced with fake tensors where this torch can (see `can_trace`), else the analytic model; a trace
    that fails falls back to the analytic model too, as its `method` then says.
    """
    batch = per_device_batch(config) if batch_size is None else batch_size
    if can_trace(device_type):
        try:
            return traced_step_memory(config, device_type, batch)
        # Fake tensors fail as operators do (NotImplementedError and torch's errors are RuntimeErrors),
        # or as a kernel's own checks do, and a torch without the internals the trace uses with an
        # AttributeError; the analytic model still answers.
        except (RuntimeError, ValueError, TypeError, AssertionError, AttributeError):
            return analytic_step_memory(config, device_type, batch)
    return analytic_step_memory(config, device_type, batch)


def largest_fitting_batch(config: RunConfig, device_type: str, memory_bytes: int, limit: int = 1 << 16) -> int:
    """The largest batch (per device, at most `limit`) whose predicted peak fits in `memory_bytes`; 0 if none.

    Every tensor of a step holds either a fixed number of bytes or a number proportional to the batch,
    so the peak grows with the batch and one boundary separates the batches that fit. The analytic
    model (microseconds a batch) finds it first; `predict_step_memory` then settles it from there,
    which takes a few predictions where it traces.
    """
    def analytic_fits(batch: int) -> bool:
        return analytic_step_memory(config, device_type, batch).peak_bytes <= memory_bytes

    def fits(batch: int) -> bool:
        return predict_step_memory(config, device_type, batch).peak_bytes <= memory_bytes

    guess = last_true(analytic_fits, 1, limit)
    return last_true(fits, max(guess, 1), limit)


def last_true(holds: Callable[[int], bool], start: int, limit: int) -> int:
    """The largest n in 1..limit for which `holds(n)`, or 0: `holds` is true up to some n, false after.

    Searched outward from `start` (in 1..limit) in doubling steps, then by bisection, so a start
    near the answer costs few calls.
    """
    step = 1
    if holds(start):
        low = start
        while low + step <= limit and holds(low + step):
            low, step = low + step, step * 2
        high = min(low + step, limit + 1)
    else:
        high = start
        while high - step >= 1 and not holds(high - step):
            high, step = high - step, step * 2
        low = max(high - step, 0)
    # holds(low) (or low is 0) and not holds(high) (or high is past the limit).
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if holds(middle) else (low, middle)
    return low


def per_device_batch(config: RunConfig) -> int:
    return config.training.batch_size // config.training.devices


def ddp_bucket_bytes(config: RunConfig, parameter_bytes: int) -> int:
    """DistributedDataParallel's gradient buckets, in a run over several devices: as large as all
    gradients, held for the whole run (the trainer keeps DDP's default, gradients apart from buckets)."""
    return parameter_bytes if config.training.devices > 1 else 0


# ---- traced with fake tensors ---------------------------------------------------------------

def can_trace(device_type: str) -> bool:
    """Whether fake tensors can run the step on this device type here. On CUDA, torch must have a
    GPU at hand: without one, CUDA autocast turns itself off and operators on fake CUDA tensors fail."""
    if device_type == "cpu":
        return True
    return device_type == "cuda" and torch.backends.cuda.is_built() and torch.cuda.is_available()


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages operators create while it is active, until each is freed.

    Storages are told apart by identity (views share their base's); each is counted once, from the
    operator that made it until it is freed. `peak` is the largest total so far, and `peak_parts` how
    that total split over the `phase` labels current when each storage was made; the phase moves
    from "activations" to "backward" by itself at the first operator of a backward pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.phase = "state"
        self.peak = 0
        self.peak_parts: dict[str, int] = {}
        self._seen: weakref.WeakSet[torch.UntypedStorage] = weakref.WeakSet()
        self._live: dict[int, list] = {}  # one [phase, bytes] per storage alive, until it is freed
        self._next_key = 0
        self._total = 0

    def restart(self) -> None:
        """Call everything alive "state", and forget the peak so far."""
        for entry in self._live.values():
            entry[0] = "state"
        self.phase, self.peak, self.peak_parts = "state", 0, {}

    def live(self) -> dict[str, int]:
        """Bytes alive now, by the phase they were made in."""
        totals: dict[str, int] = {}
        for phase, size in self._live.values():
            totals[phase] = totals.get(phase, 0) + size
        return totals

    def track(self, tensor: torch.Tensor) -> None:
        """Count a tensor made before the mode was active."""
        self._count(tensor.untyped_storage())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.phase == "activations" and torch._C._current_autograd_node() is not None:
            self.phase = "backward"  # the first operator autograd runs: the rest of the step follows
        result = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(result):
            if isinstance(leaf, torch.Tensor):
                self._count(leaf.untyped_storage())
        return result

    def _count(self, storage: torch.UntypedStorage) -> None:
        if storage in self._seen:
            return
        self._seen.add(storage)
        key, self._next_key = self._next_key, self._next_key + 1
        self._live[key] = [self.phase, storage.nbytes()]
        self._total += storage.nbytes()
        weakref.finalize(storage, self._free, key)
        if self._total > self.peak:
            self.peak, self.peak_parts = self._total, self.live()

    def _free(self, key: int) -> None:
        self._total -= self._live.pop(key)[1]


def traced_step_memory(config: RunConfig, device_type: str, batch_size: int) -> MemoryPrediction:
    """Run two training steps of `config` on fake `device_type` tensors; the second one's peak.

    One process traces the model unwrapped: DistributedDataParallel's buckets are added to it.
    """
    device = torch.device(device_type)
    m = config.model
    counter = LiveBytes()
    # Built on the meta device, outside the fake mode: initialisation reads values, fake tensors have none.
    model = build_model(m, attention=config.training.attention, device="meta")
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device=device)
        with counter:
            for tensor in (*model.parameters(), *model.buffers()):
                counter.track(tensor)
            optimizer = AdamW.from_config(model.parameters(), config.optimizer)
            # On the CPU the guard's verdict is a host bool (which fake tensors cannot give), and it keeps
            # scalars only; elsewhere the verdict goes into the AdamW update, as in training.
            guard = None if device_type == "cpu" else DivergenceGuard(config.training.divergence_factor, device)
            for step in (1, 2):
                counter.phase = "state"  # the batch is alive through the whole step
                inputs = torch.randint(m.vocab_size, (batch_size, m.context_length), device=device)
                targets = torch.randint(m.vocab_size, (batch_size, m.context_length), device=device)
                counter.phase = "activations"
                run_training_step(config, model, optimizer, inputs, targets, device, guard, step)
                if step == 1:
                    counter.restart()  # the first step built the optimizer state; the second is the steady one
        parameter_bytes = sum(p.untyped_storage().nbytes() for p in model.parameters())
        buffer_bytes = sum(b.untyped_storage().nbytes() for b in model.buffers())
    traced_other = buffer_bytes + 2 * batch_size * m.context_length * INT64
    buckets = ddp_bucket_bytes(config, parameter_bytes)
    state = counter.peak_parts.get("state", 0)
    parts = {"parameters": parameter_bytes, "optimizer_state": state - parameter_bytes - traced_other,
             "other_state": traced_other + buckets, "activations": counter.peak_parts.get("activations", 0),
             "backward": counter.peak_parts.get("backward", 0)}
    return MemoryPrediction(counter.peak + buckets, "fake", parts)


def run_training_step(config: RunConfig, model: torch.nn.Module, optimizer: AdamW,
                      inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
                      guard: DivergenceGuard | None, step: int) -> None:
    """One step as the trainer runs it, eager (the one `TrainingStep` here)."""
    TrainingStep(model, optimizer, autocast_context(device, config.training.precision), config.optimizer.grad_clip,
                 guard)(inputs, targets, step)


# ---- the analytic model ---------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    """One part of the step, in forward order, as the backward pass meets it (all in bytes)."""

    name: str
    saved: int     # what its forward pass keeps until its backward pass
    backward: int  # the most its backward pass holds at once besides the saved tensors and finished
                   # gradients: the incoming gradient(s), temporaries, the gradient it passes on
    grads: int     # the parameter gradients its backward pass leaves


@dataclass(frozen=True)
class StepShape:
    """The sizes one step works with, on one device."""

    batch: int
    model: ModelConfig
    device_type: str
    precision: str
    attention: str

    @property
    def tokens(self) -> int:
        return self.batch * self.model.context_length

    @property
    def compute(self) -> int:
        """Bytes per element of a matmul result: bf16 under autocast, else float32."""
        return BFLOAT16 if self.precision == "bf16" else FLOAT32

    @property
    def residual(self) -> int:
        """One float32 (batch, context, d_model) tensor: the residual stream, norms and their gradients
        (the residual stream stays float32 under autocast: the embedding is, and it adds bf16 to it)."""
        return self.tokens * self.model.d_model * FLOAT32

    def hidden(self, width: int) -> int:
        """One matmul result of `width` features per token."""
        return self.tokens * width * self.compute

    @property
    def score_elements(self) -> int:
        """Elements of one layer's (batch, heads, context, context) attention scores."""
        return self.batch * self.model.num_heads * self.model.context_length ** 2

    @property
    def rows(self) -> int:
        """(batch, heads, context): one softmax statistic per query."""
        return self.batch * self.model.num_heads * self.model.context_length

    def linear_input(self, consumers: int) -> int:
        """What `consumers` linear layers reading the same float32 (.., d_model) tensor keep of it:
        the tensor itself in float32, or under autocast one bf16 copy each (only a parameter's cast
        is cached by autocast, not an activation's)."""
        if self.precision == "bf16":
            return consumers * self.tokens * self.model.d_model * BFLOAT16
        return self.residual

    def weight_copies(self, elements: int) -> int:
        """Autocast's bf16 copies of weights with `elements` elements: kept for the backward pass."""
        return elements * BFLOAT16 if self.precision == "bf16" else 0

    def weight_gradient(self, elements: int) -> int:
        """A matmul's weight gradient while it is made: under autocast in bf16, then its float32 copy."""
        return elements * (self.compute + (FLOAT32 if self.precision == "bf16" else 0))

    @property
    def scores_materialised(self) -> bool:
        """Whether attention builds the (context x context) scores: the reference formula always; fused
        is torch's SDPA (flash or memory-efficient kernels, no scores kept), except on the CPU under bf16
        (the reference formula with torch.softmax, see MultiHeadSelfAttention._attend) and on MPS
        (whose SDPA computes and keeps the attention weights)."""
        if self.attention == "reference":
            return True
        return self.device_type == "mps" or (self.device_type == "cpu" and self.precision == "bf16")

    @property
    def softmax_element(self) -> int:
        """Bytes per element of the reference softmax's exponentials and its backward temporaries: CUDA
        autocast runs exp and sum in float32, CPU autocast keeps them in bf16."""
        return FLOAT32 if self.device_type == "cuda" else self.compute


def norm_stage(s: StepShape, name: str, branch: bool) -> Stage:
    """RMSNorm of a float32 (.., d_model) tensor: keeps its input, x * rsqrt(mean(x^2) + eps) and the rsqrt.

    `branch`: the norm opens a pre-norm sublayer, whose residual stream's gradient is alive meanwhile.
    """
    saved = 2 * s.residual + s.tokens * FLOAT32
    # The incoming gradient, and three (.., d_model) tensors at once among the backward's temporaries
    # and the gradient it passes on (the saved input and product are freed on the way).
    return Stage(name, saved, (4 + branch) * s.residual, s.model.d_model * FLOAT32)


def attention_stage(s: StepShape, layer: int) -> Stage:
    """q, k, v projections, RoPE, attention on the path `s` takes, output projection."""
    m, c = s.model, s.compute
    d_head = m.d_model // m.num_heads
    per_token = s.hidden(m.d_model)  # one of q, k, v, the attention output
    saved = s.linear_input(3) + s.weight_copies(4 * m.d_model ** 2)
    if m.position == "rope":
        saved += 2 * m.context_length * d_head * FLOAT32  # the complex rotations RoPE multiplies q and k by
    if s.scores_materialised:
        # q and k^T, v and the output copied contiguous for the batched matmuls and the output projection.
        saved += 4 * per_token + m.context_length ** 2  # and the boolean causal mask
        if s.attention == "reference":  # exp(x - max) and its normalised copy, and the row sums
            softmax = s.softmax_element
            saved += s.score_elements * (softmax + c) + s.rows * softmax
            # The division's backward: the gradient of the probabilities and four score-sized temporaries.
            core = 4 * s.score_elements * softmax
        else:  # torch.softmax keeps only its result
            saved += s.score_elements * c
            # The probabilities' gradient and the scores' (made while the probabilities are still kept).
            core = 2 * s.score_elements * c
    else:
        # SDPA keeps q, k, v (the tensors RoPE and the projection made), its output and the log-sum-exp.
        saved += 4 * per_token + s.rows * FLOAT32
        # The output's gradient and those of q, k, v; flash attention on CUDA accumulates dq in float32.
        core = 4 * per_token + (s.tokens * m.d_model * FLOAT32 if s.device_type == "cuda" else 0)
    output_projection = s.weight_gradient(m.d_model ** 2) + per_token
    # The residual stream's gradient, its bf16 copy for the sublayer, and the larger of the two steps.
    incoming = s.residual + (s.tokens * m.d_model * BFLOAT16 if s.precision == "bf16" else 0)
    return Stage(f"layers.{layer}.attention", saved, incoming + max(core, output_projection),
                 4 * m.d_model ** 2 * FLOAT32)


def ffn_stage(s: StepShape, layer: int) -> Stage:
    """SwiGLU w2(silu(w1 x) * w3 x) or the SiLU MLP w2(silu(w1 x))."""
    m = s.model
    gated = m.ffn == "swiglu"
    matrices = 3 if gated else 2
    hidden = s.hidden(m.d_ff)
    # w1 x, its sigmoid and silu; with the gate also w3 x and the product w2 reads.
    saved = s.linear_input(2 if gated else 1) + s.weight_copies(matrices * m.d_model * m.d_ff) \
        + (5 if gated else 3) * hidden
    incoming = s.residual + (s.tokens * m.d_model * BFLOAT16 if s.precision == "bf16" else 0)
    # w2's weight gradient and input gradient, or two (batch, context, d_ff) gradients at once further down.
    work = max(s.weight_gradient(m.d_model * m.d_ff) + hidden, 2 * hidden)
    return Stage(f"layers.{layer}.ffn", saved, incoming + work, matrices * m.d_model * m.d_ff * FLOAT32)


def head_stages(s: StepShape) -> list[Stage]:
    """The final norm (pre-norm models), the LM head and the cross-entropy."""
    m = s.model
    logits = s.tokens * m.vocab_size * s.compute
    stages = [norm_stage(s, "ln_final", branch=False)] if m.norm == "pre" else []
    grad_input = s.hidden(m.d_model)
    head_backward = logits + s.weight_gradient(m.vocab_size * m.d_model) + grad_input
    if s.precision == "bf16":  # the float32 copies of both gradients, once the logits' gradient is gone
        head_backward = max(head_backward, s.weight_gradient(m.vocab_size * m.d_model) + grad_input + s.residual)
    stages.append(Stage("lm_head", s.linear_input(1) + s.weight_copies(m.vocab_size * m.d_model),
                        head_backward, m.vocab_size * m.d_model * FLOAT32))
    # cross_entropy keeps float32 exponentials of the logits and their row sums; its backward makes the
    # float32 gradient of the logits, and under autocast its bf16 copy.
    probabilities = s.tokens * m.vocab_size * FLOAT32
    loss_backward = probabilities + (s.tokens * m.vocab_size * BFLOAT16 if s.precision == "bf16" else 0)
    stages.append(Stage("loss", probabilities + s.tokens * FLOAT32, loss_backward, 0))
    return stages


def step_stages(s: StepShape) -> list[Stage]:
    """Every stage of the step, in forward order."""
    m = s.model
    # The embedding's backward scatters into a zero (vocab, d_model) tensor and returns a new one.
    embedding = m.vocab_size * m.d_model * FLOAT32
    stages = [Stage("embedding", 0, s.residual + 2 * embedding, embedding)]
    for layer in range(m.num_layers):
        attention, ffn = attention_stage(s, layer), ffn_stage(s, layer)
        if m.norm == "pre":
            stages += [norm_stage(s, f"layers.{layer}.ln1", branch=True), attention,
                       norm_stage(s, f"layers.{layer}.ln2", branch=True), ffn]
        elif m.norm == "post":
            stages += [attention, norm_stage(s, f"layers.{layer}.ln1", branch=False), ffn,
                       norm_stage(s, f"layers.{layer}.ln2", branch=False)]
        else:
            stages += [attention, ffn]
    return stages + head_stages(s)


def optimizer_state_bytes(device_type: str, parameter_bytes: int) -> int:
    """AdamW's two moments, and on the CPU the denominators of its foreach update; off the CPU the
    divergence guard's verdict makes the update the guarded one, which keeps no denominators."""
    return (3 if device_type == "cpu" else 2) * parameter_bytes


# The guarded update (off the CPU) goes parameter by parameter, holding the new moments and weights
# and up to three intermediates of that parameter's size at once (tinylm.optim.fused_update).
GUARDED_UPDATE_TEMPORARIES = 6


def analytic_step_memory(config: RunConfig, device_type: str, batch_size: int) -> MemoryPrediction:
    """The analytic model of the step: its fixed state, then the backward pass walked stage by stage.

    At each stage the backward pass holds the tensors saved by that stage and the ones before it, the
    gradients of the parameters after it, and what the stage's backward makes (`Stage.backward`); the
    peak is the largest of these. The forward pass is left out: a stage's backward holds at least
    what its forward held at once beyond the same saved tensors (the logits' gradient is as large as
    the logits). After the backward pass, every gradient is alive while the update runs; off the CPU
    the guarded update adds its temporaries for one parameter at a time.
    """
    m, t = config.model, config.training
    shape = StepShape(batch_size, m, device_type, t.precision, t.attention)
    parameters = parameter_count(m) * FLOAT32
    rope_tables = 2 * m.context_length * (m.d_model // m.num_heads) * FLOAT32 * m.num_layers \
        if m.position == "rope" else 0
    other = rope_tables + 2 * shape.tokens * INT64 + ddp_bucket_bytes(config, parameters)
    state = {"parameters": parameters, "optimizer_state": optimizer_state_bytes(device_type, parameters),
             "other_state": other}
    stages = step_stages(shape)
    saved, grads = sum(stage.saved for stage in stages), 0
    activations, backward = 0, 0  # at the peak
    for stage in reversed(stages):
        if saved + grads + stage.backward > activations + backward:
            activations, backward = saved, grads + stage.backward
        saved, grads = saved - stage.saved, grads + stage.grads
    if device_type != "cpu":
        largest = max(m.vocab_size * m.d_model, m.d_model * m.d_ff, m.d_model ** 2) * FLOAT32
        if grads + GUARDED_UPDATE_TEMPORARIES * largest > activations + backward:
            activations, backward = 0, grads + GUARDED_UPDATE_TEMPORARIES * largest
    parts = {**state, "activations": activations, "backward": backward}
    return MemoryPrediction(sum(parts.values()), "analytic", parts)
