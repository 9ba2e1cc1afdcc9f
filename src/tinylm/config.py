"""Run configuration: one dataclass per concern, each validating itself.

A run is `RunConfig(name, model, optimizer, training, data)`. The pipeline writes one JSON file per
run (a base config plus that experiment's overrides) and `tinylm train` reads it back; the same JSON
is saved next to every checkpoint. Unknown keys and bad values raise `ValueError` naming the key,
e.g. `training.batch_size: must be a positive integer, got 0`.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

from tinylm.architecture import ATTENTIONS, FFNS, NORMS, POSITIONS, check_choice
from tinylm.files import file_error, read_json, require_file, write_json_atomic

PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{key}: {message}")


def _positive_int(value: Any, key: str) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
           f"must be a positive integer, got {value!r}")


def _non_negative_int(value: Any, key: str) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0, key,
           f"must be a non-negative integer, got {value!r}")


def _number(value: Any, key: str, low: float, high: float | None = None, low_open: bool = False,
            high_open: bool = False) -> None:
    """A finite number from `low` (up to `high` where given); each bound closed unless said open."""
    if high is None:
        interval = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        interval = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low)
          and (high is None or (value < high if high_open else value <= high)))
    _check(ok, key, f"must be {interval}, got {value!r}")


# Every setting is part of what a run computes unless its field's metadata gives it another role.
IDENTITY = {"role": "identity"}        # what a run is called
DATA = {"role": "data"}                # which files it reads (the plan names their corpus and tokenizer)
OBSERVATION = {"role": "observation"}  # how it is logged, evaluated and checkpointed: not what it learns
EXECUTION = {"role": "execution"}      # where and how it runs: a checkpoint resumes across a change


def _settings(config: Any, prefix: str, leave_out: tuple[str, ...]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(_settings(value, f"{prefix}{f.name}.", leave_out))
        elif f.metadata.get("role") not in leave_out:
            flat[f"{prefix}{f.name}"] = value
    return flat


@dataclass
class ModelConfig:
    """Transformer shape and architecture variant (see tinylm.nn.TransformerLM)."""

    vocab_size: int = 10000
    context_length: int = 256
    d_model: int = 512
    num_layers: int = 4
    num_heads: int = 16
    d_ff: int = 1344
    rope_theta: float = 10000.0
    norm: str = "pre"        # pre | post | none
    position: str = "rope"   # rope | none (NoPE)
    ffn: str = "swiglu"      # swiglu | silu

    def validate(self, prefix: str = "model") -> None:
        for name in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "d_ff"):
            _positive_int(getattr(self, name), f"{prefix}.{name}")
        _check(self.d_model % self.num_heads == 0, f"{prefix}.d_model",
               f"{self.d_model} is not divisible by num_heads={self.num_heads}")
        _number(self.rope_theta, f"{prefix}.rope_theta", low=0, low_open=True)
        if self.position == "rope":
            _check((self.d_model // self.num_heads) % 2 == 0, f"{prefix}.d_model",
                   "RoPE needs an even head dimension (d_model / num_heads)")
        check_choice(f"{prefix}.norm", self.norm, NORMS)
        check_choice(f"{prefix}.position", self.position, POSITIONS)
        check_choice(f"{prefix}.ffn", self.ffn, FFNS)

    def variant(self) -> dict[str, str]:
        """The keyword arguments that select the architecture variant."""
        return {"norm": self.norm, "position": self.position, "ffn": self.ffn}


@dataclass
class OptimizerConfig:
    """AdamW with a cosine learning-rate schedule, linear warm-up and gradient clipping."""

    lr: float = 1e-3                 # peak learning rate
    min_lr_ratio: float = 0.1        # the schedule ends at lr * min_lr_ratio
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0           # max global L2 norm; 0 disables clipping

    def validate(self, prefix: str = "optimizer") -> None:
        _number(self.lr, f"{prefix}.lr", low=0, low_open=True)
        _number(self.min_lr_ratio, f"{prefix}.min_lr_ratio", low=0, high=1)
        _non_negative_int(self.warmup_steps, f"{prefix}.warmup_steps")
        _check(isinstance(self.betas, (tuple, list)) and len(self.betas) == 2, f"{prefix}.betas",
               f"must be two numbers in [0, 1), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            _number(beta, f"{prefix}.betas[{i}]", low=0, high=1, high_open=True)
        _number(self.eps, f"{prefix}.eps", low=0, low_open=True)
        _number(self.weight_decay, f"{prefix}.weight_decay", low=0)
        _number(self.grad_clip, f"{prefix}.grad_clip", low=0)

    @property
    def min_lr(self) -> float:
        return self.lr * self.min_lr_ratio


@dataclass
class TrainingConfig:
    """Budget, evaluation, stopping, checkpointing and execution settings."""

    batch_size: int = 32                    # global batch (split across devices)
    max_steps: int | None = None            # budget in steps ...
    max_tokens: int | None = None           # ... or in tokens (exactly one of the two)
    eval_interval: int = field(default=100, metadata=OBSERVATION)      # steps between validation evaluations
    eval_batches: int = 8                   # fixed, seeded validation batches per evaluation
    final_eval_tokens: int | None = None    # tokens of the validation array for the final evaluation; None = all
    log_interval: int = field(default=10, metadata=OBSERVATION)        # steps between metrics lines
    checkpoint_interval: int = field(default=500, metadata=OBSERVATION)  # steps between resumable checkpoints
    early_stop_loss: float | None = None    # stop once validation loss falls below this
    divergence_factor: float = 2.0          # diverged if train loss > factor * the untrained model's (or non-finite)
    seed: int = 0
    device: str = field(default="auto", metadata=EXECUTION)  # auto | cpu | cuda | mps
    devices: int = field(default=1, metadata=EXECUTION)      # processes under torchrun (DistributedDataParallel)
    precision: str = "fp32"                 # fp32 | bf16 (autocast: matmuls in bf16, norms and the loss in fp32)
    # torch.compile the step and the AdamW update: true | false | auto (where it pays)
    compile: Any = field(default="auto", metadata=EXECUTION)
    attention: str = "reference"            # reference | fused (torch scaled_dot_product_attention)
    wandb: bool = field(default=False, metadata=EXECUTION)   # log to Weights & Biases when installed
    # one device's peak FLOP/s for MFU; None = tinylm.training.peak_flops' table
    peak_flops: float | None = field(default=None, metadata=EXECUTION)

    def validate(self, prefix: str = "training") -> None:
        for name in ("batch_size", "eval_interval", "eval_batches", "log_interval", "checkpoint_interval", "devices"):
            _positive_int(getattr(self, name), f"{prefix}.{name}")
        _check((self.max_steps is None) != (self.max_tokens is None), f"{prefix}.max_steps",
               "set exactly one of max_steps and max_tokens")
        for name in ("max_steps", "max_tokens", "final_eval_tokens"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), f"{prefix}.{name}")
        if self.early_stop_loss is not None:
            _number(self.early_stop_loss, f"{prefix}.early_stop_loss", low=0, low_open=True)
        _number(self.divergence_factor, f"{prefix}.divergence_factor", low=1, low_open=True)
        _non_negative_int(self.seed, f"{prefix}.seed")
        _check(self.batch_size % self.devices == 0, f"{prefix}.batch_size",
               f"{self.batch_size} is not divisible by devices={self.devices}")
        check_choice(f"{prefix}.device", self.device, DEVICES)
        check_choice(f"{prefix}.precision", self.precision, PRECISIONS)
        check_choice(f"{prefix}.attention", self.attention, ATTENTIONS)
        _check(isinstance(self.compile, bool) or self.compile == "auto", f"{prefix}.compile",
               f"must be true, false or auto, got {self.compile!r}")
        if self.peak_flops is not None:
            _check(math.isfinite(self.peak_flops) and self.peak_flops > 0, f"{prefix}.peak_flops",
                   f"must be a positive number of FLOP/s, got {self.peak_flops}")


@dataclass
class DataConfig:
    """Token arrays (.npy, memory-mapped) and the tokenizer that made them."""

    train_tokens: str = field(default="", metadata=DATA)
    valid_tokens: str = field(default="", metadata=DATA)
    tokenizer_dir: str | None = field(default=None, metadata=DATA)  # vocab.json + merges.txt, for generation

    def validate(self, prefix: str = "data") -> None:
        for name in ("train_tokens", "valid_tokens"):
            _check(bool(getattr(self, name)), f"{prefix}.{name}", "is required (a path to a .npy token array)")

    def check_files(self, prefix: str = "data") -> None:
        """Fail early, naming the missing file, before any training work starts."""
        for name in ("train_tokens", "valid_tokens"):
            require_file(getattr(self, name), f"{prefix}.{name}: token file")


RUN_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._=+-]*"  # path-safe: a run's name is its folders' name
RUN_NAME = re.compile(f"^{RUN_NAME_PATTERN}$")


@dataclass
class RunConfig:
    name: str = field(default="run", metadata=IDENTITY)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> RunConfig:
        _check(bool(RUN_NAME.match(self.name)), "name",
               f"{self.name!r} is not path-safe (letters, digits and . _ = + - only)")
        self.model.validate()
        self.optimizer.validate()
        self.training.validate()
        self.data.validate()
        _check(self.optimizer.warmup_steps <= self.total_steps, "optimizer.warmup_steps",
               f"{self.optimizer.warmup_steps} is longer than the run ({self.total_steps} steps): "
               "the learning rate would never reach optimizer.lr")
        return self

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the budget (a token budget is rounded up to whole batches)."""
        if self.training.max_steps is not None:
            return self.training.max_steps
        assert self.training.max_tokens is not None  # validation sets exactly one of the two
        return math.ceil(self.training.max_tokens / self.tokens_per_step)

    @property
    def tokens_per_step(self) -> int:
        """Training tokens in one optimizer step (the global batch)."""
        return self.training.batch_size * self.model.context_length

    @property
    def planned_tokens(self) -> int:
        """Training tokens in the budget: whole steps of the global batch."""
        return self.total_steps * self.tokens_per_step

    def settings(self, leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
        """Every setting by its dotted key (`optimizer.lr`: 0.003), without those of the roles in
        `leave_out`: "identity" (the name), "data" (the token files), "observation" (how a run is
        logged, evaluated and checkpointed) or "execution" (where and how it runs)."""
        return _settings(self, "", leave_out)

    # ---- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _build(cls, data, prefix="").validate()

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (temporary file, then rename)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunConfig:
        data = read_json(path, "run config", expect=dict)
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise file_error("run config", path, str(error)) from None

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """A copy with dotted keys replaced, e.g. {"optimizer.lr": 3e-3, "model.norm": "none"}."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            node = data
            for i, part in enumerate(parents):
                if not isinstance(node.get(part), dict):
                    raise ValueError(f"{'.'.join(parents[: i + 1])}: unknown config section in override {dotted!r}")
                node = node[part]
            if leaf not in node:
                raise ValueError(f"{dotted}: unknown config key in override")
            node[leaf] = value
        return RunConfig.from_dict(data)


def _build(cls, data: Any, prefix: str):
    """Build dataclass `cls` from a dict, rejecting unknown keys and coercing simple types."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown config key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=key + ".")
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(options[0], value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(get_args(hint)):
            raise ValueError(f"{key}: expected a list of {len(get_args(hint))} values, got {value!r}")
        return tuple(_coerce(t, v, f"{key}[{i}]") for i, (t, v) in enumerate(zip(get_args(hint), value)))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads 1e-3 as a string
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    return value
