"""`tinylm train`: train one Transformer LM from a run config, resumably.

    tinylm train --config RUN.json --out-dir results/runs/RUN --checkpoint-dir results/checkpoints/RUN

Writes OUT_DIR/config.json, metrics.jsonl (one line per logged step), summary.json and model.pt
(weights + config). A checkpoint in CHECKPOINT_DIR is resumed from; the resumed run reproduces the
uninterrupted one bitwise on CPU because the batch of step t depends only on (seed, t) and the
checkpoint carries the model, optimizer, RNG states and counters.

Exit status: 0 when the run completed, stopped early at its target loss, or diverged (a diverged
run is a result); EXIT_PREEMPTED (143 = 128 + SIGTERM) when a SIGTERM stopped it after saving a
checkpoint, so a scheduler can requeue it; 2 for bad input.

With `training.devices: N > 1` the command relaunches itself under torchrun with N processes
(DistributedDataParallel, gloo on CPU, NCCL on GPU). Every process trains on its slice of the same
global batch a single process would draw; rank 0 alone writes files.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from tinylm import checkpoint as ckpt
from tinylm.config import RunConfig
from tinylm.data import (
    batch_from_starts,
    check_token_ids,
    load_tokens,
    loss_sum_over_windows,
    rank_slice,
    sequential_windows,
    train_batch_starts,
    validation_starts,
)
from tinylm.fileio import write_json_atomic, write_text_atomic
from tinylm.memory import memory_stats
from tinylm.nn import build_model, model_flops_utilization, parameter_count, training_flops_per_token
from tinylm.nn.functional import cross_entropy, gradient_clipping
from tinylm.optim import AdamW, cosine_lr

EXIT_PREEMPTED = 128 + signal.SIGTERM  # 143: checkpoint saved after SIGTERM, requeue to continue

# Settings that change how a run executes, not what it computes: a checkpoint resumes across them.
EXECUTION_KEYS = {"training.device", "training.devices", "training.compile", "training.wandb"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config JSON (see tinylm.config.RunConfig)")
    parser.add_argument("--out-dir", required=True, help="metrics.jsonl, summary.json, config.json, model.pt")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="resumable checkpoint.pt (default: OUT_DIR); resumed from when present")


def run(args: argparse.Namespace) -> int:
    config = RunConfig.load(args.config)
    checkpoint_dir = args.checkpoint_dir or args.out_dir
    if config.training.devices > 1 and "LOCAL_RANK" not in os.environ:
        open_token_arrays(config)  # bad input fails here, not in N processes at once
        return launch_distributed(args, config.training.devices, checkpoint_dir)
    return Trainer(config, args.out_dir, checkpoint_dir).train()


# ---- devices, precision, one optimizer step -------------------------------------------------

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


def autocast_context(device: torch.device, precision: str) -> Callable[[], ContextManager]:
    """A factory of the context the forward pass runs in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                  targets: torch.Tensor, precision: Callable[[], ContextManager], grad_clip: float,
                  before_update: Callable[[torch.Tensor, torch.Tensor], bool] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, clip, AdamW update; returns (loss, grad norm before clipping).

    `before_update(loss, grad_norm)` may veto the update (return False), e.g. on a diverged loss.
    """
    with precision():
        logits = model(inputs)                     # (batch, context, vocab)
    loss = cross_entropy(logits, targets)          # float32 scalar
    loss.backward()
    grad_norm = gradient_clipping(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    if before_update is None or before_update(loss.detach(), grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm


def open_token_arrays(config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """The memory-mapped train and validation arrays, checked against the model's vocab and context."""
    config.data.check_files()
    arrays = []
    for key in ("train_tokens", "valid_tokens"):
        path = getattr(config.data, key)
        tokens = load_tokens(path)
        context = config.model.context_length
        if len(tokens) <= context:
            raise ValueError(f"data.{key}: {path!r} has {len(tokens)} tokens, fewer than "
                             f"model.context_length + 1 = {context + 1}")
        check_token_ids(tokens, config.model.vocab_size, f"data.{key}: {path!r}")
        arrays.append(tokens)
    return arrays[0], arrays[1]


# ---- multi-process launch -------------------------------------------------------------------

def launch_distributed(args: argparse.Namespace, processes: int, checkpoint_dir: str) -> int:
    """Rerun this command under torchrun with `processes` workers; forward SIGTERM/SIGINT to it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "tinylm", "train", "--config", args.config,
               "--out-dir", args.out_dir, "--checkpoint-dir", checkpoint_dir]
    launcher = subprocess.Popen(command)
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        launcher.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = launcher.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # torchrun reports any failed worker as 1; after a SIGTERM the workers saved and stopped.
    if signal.SIGTERM in received and status != 0:
        return EXIT_PREEMPTED
    return status


class Distributed:
    """Rank, world size and the collectives the trainer needs (no-ops for one process)."""

    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.is_main = self.rank == 0

    def start(self, device: torch.device) -> None:
        if self.world_size > 1:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over all processes."""
        if self.world_size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def stop(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ---- the trainer ----------------------------------------------------------------------------

def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/Infinity: a non-finite number is written as null."""
    return value if value is not None and math.isfinite(value) else None


def _percent(peak: int, total: int) -> float:
    """Peak memory as a percentage of the device's (or machine's) total."""
    return round(100.0 * peak / total, 3)


class Trainer:
    """One training run: setup (or resume), the step loop, evaluations, checkpoints, final outputs."""

    def __init__(self, config: RunConfig, out_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike):
        self.config = config
        self.out_dir = Path(out_dir)
        self.checkpoint_path = ckpt.checkpoint_file(checkpoint_dir)
        self.dist = Distributed()
        t = config.training
        if t.batch_size % self.dist.world_size:
            raise ValueError(f"training.batch_size: {t.batch_size} is not divisible by the "
                             f"{self.dist.world_size} processes")
        self.device = resolve_device(t.device, self.dist.local_rank)
        if self.dist.world_size > 1 and self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"training.devices: several processes need cpu or cuda, not {self.device.type}")
        self.train_tokens, self.valid_tokens = open_token_arrays(config)
        self.precision = autocast_context(self.device, t.precision)
        self.total_steps = config.total_steps
        self.tokens_per_step = config.tokens_per_step
        self.preempt_requested = False

    # -- setup and resume --

    def _build(self) -> None:
        c, t, o = self.config, self.config.training, self.config.optimizer
        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        random.seed(t.seed)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for fp32 runs on GPU
        self.model = build_model(c.model, attention=t.attention, device=self.device)
        self.params = parameter_count(c.model)
        self.optimizer = AdamW.from_config(self.model.parameters(), o)
        self.progress: dict[str, Any] = {
            "step": 0, "tokens": 0, "time_s": 0.0, "train_time_s": 0.0, "status": "running",
            "initial_loss": None, "last_train_loss": None, "best_val_loss": None,
            "target_reached_step": None, "diverged_at_step": None,
            "metrics_lines": [],  # metrics.jsonl so far (rank 0), carried by every checkpoint
        }
        if self.checkpoint_path.is_file():
            self._resume()
        # Wrappers go on after loading, so checkpoints always hold the bare model's keys.
        self.eval_model = torch.compile(self.model) if t.compile else self.model
        self.train_model = self.eval_model
        if self.dist.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.eval_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.config.save(self.out_dir / "config.json")
            # The lines logged up to the checkpoint come from the checkpoint itself: Snakemake deletes
            # a failed job's outputs, and lines logged after the checkpoint are redone on resume.
            write_text_atomic(self.out_dir / "metrics.jsonl",
                              "".join(line + "\n" for line in self.progress["metrics_lines"]))

    def _resume(self) -> None:
        # Loaded on the CPU: RNG states must stay there; weights and moments move to their parameters.
        state = ckpt.load_training_state(self.checkpoint_path)
        saved = RunConfig.from_dict(state["config"])
        mismatch = _config_difference(saved.to_dict(), self.config.to_dict())
        if mismatch:
            key, old, new = mismatch
            raise ValueError(f"checkpoint {str(self.checkpoint_path)!r} belongs to another config "
                             f"({key}: {old!r} there, {new!r} now); delete it to start over")
        self.model.load_state_dict(ckpt.clean_state_dict(state["model"]))
        self.optimizer.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        self.progress.update(state["progress"])
        if self.dist.is_main:
            print(f"resuming {self.config.name} from {self.checkpoint_path} at step {self.progress['step']}",
                  file=sys.stderr)

    def _save_checkpoint(self) -> None:
        if self.dist.is_main:
            ckpt.save_training_state(self.checkpoint_path, self.model, self.optimizer, self.config, self.progress)

    # -- evaluation --

    def _evaluate(self, windows: list[tuple[int, int]]) -> tuple[float, int]:
        """Mean loss over `windows` of the validation array, shared out over the processes."""
        self.eval_model.eval()
        mine = windows[self.dist.rank::self.dist.world_size]
        total, count = loss_sum_over_windows(self.eval_model, self.valid_tokens, mine,
                                             self.config.training.batch_size // self.dist.world_size,
                                             self.device, cross_entropy, self.precision)
        total, count = self.dist.sum([total, float(count)], self.device)
        self.eval_model.train()
        return total / count, int(count)

    def _validation_windows(self) -> list[tuple[int, int]]:
        t, context = self.config.training, self.config.model.context_length
        batches = validation_starts(len(self.valid_tokens), t.eval_batches, t.batch_size, context, t.seed)
        return [(int(start), context) for batch in batches for start in batch]

    # -- the loop --

    def train(self) -> int:
        self.dist.start(self.device)
        in_main_thread = threading.current_thread() is threading.main_thread()  # where signals can be caught
        previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm) if in_main_thread else None
        try:
            self._build()
            if self.progress["status"] == "running":
                preempted = self._loop()
                if preempted:
                    return EXIT_PREEMPTED
            self._finish()
            return 0
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous_sigterm)
            self.dist.stop()

    def _on_sigterm(self, _signum, _frame) -> None:
        self.preempt_requested = True  # acted on at the end of the current step, by every process

    def _loop(self) -> bool:
        """Run steps until the budget, a stop rule or a SIGTERM; True if stopped by SIGTERM."""
        t, p = self.config.training, self.progress
        validation = self._validation_windows()
        metrics = open(self.out_dir / "metrics.jsonl", "a") if self.dist.is_main else None
        wandb_run = _start_wandb(self.config, self.out_dir) if self.dist.is_main and t.wandb else None
        progress_bar = _progress_bar(self.total_steps, p["step"], self.config.name, self.dist.is_main)
        session_start = time.perf_counter() - p["time_s"]
        logged_tokens, logged_train_s = 0, 0.0  # since the last metrics line, for its tokens/s
        self.train_model.train()
        try:
            while p["step"] < self.total_steps:
                step_start = time.perf_counter()
                step = self._one_step()
                train_s = time.perf_counter() - step_start
                p["step"] += 1
                p["train_time_s"] += train_s
                p["last_train_loss"] = step["loss"]
                if p["initial_loss"] is None:
                    p["initial_loss"] = step["loss"]
                if step["diverged"]:
                    p["status"], p["diverged_at_step"] = "diverged", p["step"]
                else:
                    p["tokens"] += self.tokens_per_step
                val_loss = None
                if p["status"] == "running" and p["step"] % t.eval_interval == 0:
                    val_loss = self._periodic_evaluation(validation)
                p["time_s"] = time.perf_counter() - session_start
                logged_tokens, logged_train_s = logged_tokens + self.tokens_per_step, logged_train_s + train_s

                # No extra line on SIGTERM: the resumed run's metrics must read as an uninterrupted run's.
                last = p["status"] != "running" or p["step"] == self.total_steps
                if self.dist.is_main and (p["step"] % t.log_interval == 0 or val_loss is not None or last):
                    record = self._metrics_record(step, val_loss, logged_tokens / max(logged_train_s, 1e-9))
                    line = json.dumps(record)
                    p["metrics_lines"].append(line)
                    metrics.write(line + "\n")
                    metrics.flush()
                    if wandb_run is not None:
                        wandb_run.log({k: v for k, v in record.items() if v is not None}, step=p["step"])
                    logged_tokens, logged_train_s = 0, 0.0
                progress_bar.update(1)
                progress_bar.set_postfix(loss=f"{step['loss']:.3f}", lr=f"{step['lr']:.2e}",
                                         tok_s=f"{self.tokens_per_step / max(train_s, 1e-9):,.0f}", refresh=False)

                if p["status"] != "running":
                    return False
                if step["preempt"]:
                    self._save_checkpoint()
                    if self.dist.is_main:
                        print(f"SIGTERM: checkpoint saved at step {p['step']}; exiting with {EXIT_PREEMPTED}",
                              file=sys.stderr)
                    return True
                if p["step"] % t.checkpoint_interval == 0 and p["step"] < self.total_steps:
                    self._save_checkpoint()
            p["status"] = "completed"
            return False
        finally:
            progress_bar.close()
            if metrics is not None:
                metrics.close()
            if wandb_run is not None:
                wandb_run.finish()

    def _one_step(self) -> dict[str, Any]:
        """One optimizer step on this process's slice of the global batch of the current step.

        Returns the step's lr, the global batch's loss, the gradient norm, whether the step
        diverged (then the weights are left as they were) and whether any process got SIGTERM.
        """
        o, t, p = self.config.optimizer, self.config.training, self.progress
        context = self.config.model.context_length
        # Indexed by the step being completed (1..total): no zero-lr first step, ends at min_lr.
        lr = cosine_lr(p["step"] + 1, o.lr, o.min_lr, o.warmup_steps, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        starts = train_batch_starts(len(self.train_tokens), t.batch_size, context, t.seed, p["step"])
        inputs, targets = batch_from_starts(
            self.train_tokens, rank_slice(starts, self.dist.rank, self.dist.world_size), context, self.device)
        result: dict[str, Any] = {"lr": lr}

        def agree(loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
            # One sync a step, shared by all processes so they all take the same decisions.
            loss_sum, preempt = self.dist.sum([float(loss) / self.dist.world_size, float(self.preempt_requested)],
                                              self.device)
            result.update(loss=loss_sum, grad_norm=float(grad_norm), preempt=preempt > 0)
            result["diverged"] = self._diverged(result["loss"], result["grad_norm"])
            return not result["diverged"]

        training_step(self.train_model, self.optimizer, inputs, targets, self.precision, o.grad_clip,
                      before_update=agree)
        return result

    def _periodic_evaluation(self, validation: list[tuple[int, int]]) -> float:
        """Loss on the fixed validation batches; tracks the best, applies the early-stop target."""
        t, p = self.config.training, self.progress
        val_loss, _ = self._evaluate(validation)
        if p["best_val_loss"] is None or val_loss < p["best_val_loss"]:
            p["best_val_loss"] = val_loss
        if t.early_stop_loss is not None and val_loss < t.early_stop_loss:
            p["status"], p["target_reached_step"] = "early_stopped", p["step"]
        return val_loss

    def _diverged(self, loss: float, grad_norm: float) -> bool:
        initial = self.progress["initial_loss"]
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return True
        return initial is not None and loss > self.config.training.divergence_factor * initial

    def _metrics_record(self, step: dict[str, Any], val_loss: float | None, tokens_per_s: float) -> dict[str, Any]:
        allocated, peak, total = memory_stats(self.device)
        p = self.progress
        return {"step": p["step"], "tokens": p["tokens"], "time_s": round(p["time_s"], 3), "lr": step["lr"],
                "train_loss": _finite_or_none(step["loss"]), "grad_norm": _finite_or_none(step["grad_norm"]),
                "tokens_per_s": round(tokens_per_s, 1), "val_loss": val_loss,
                "mem_allocated_bytes": allocated, "mem_peak_bytes": peak, "mem_total_bytes": total,
                "mem_percent": _percent(peak, total)}

    # -- final outputs --

    def _model_flops_utilization(self, tokens_per_s: float) -> float | None:
        """Fraction of the H100's bf16 peak, on an H100 only (elsewhere that peak means nothing)."""
        if self.device.type != "cuda" or "H100" not in torch.cuda.get_device_name(self.device):
            return None
        return round(model_flops_utilization(tokens_per_s / self.dist.world_size, self.config.model), 4)

    def _finish(self) -> None:
        """Final evaluation on the validation array; checkpoint, model.pt and summary.json."""
        p, t = self.progress, self.config.training
        # Saved first: a job killed during the (possibly long) final evaluation reruns only that.
        self._save_checkpoint()
        final_val_loss, final_val_tokens = None, 0
        if p["status"] != "diverged":
            windows = sequential_windows(len(self.valid_tokens), self.config.model.context_length,
                                         t.final_eval_tokens)
            final_val_loss, final_val_tokens = self._evaluate(windows)
            if p["best_val_loss"] is None or final_val_loss < p["best_val_loss"]:
                p["best_val_loss"] = final_val_loss
        if not self.dist.is_main:
            return
        ckpt.save_model(self.out_dir / "model.pt", self.model, self.config)
        _, peak, total = memory_stats(self.device)
        tokens_per_s = p["tokens"] / p["train_time_s"] if p["train_time_s"] > 0 else None
        summary = {
            "name": self.config.name, "status": p["status"], "steps": p["step"], "tokens": p["tokens"],
            "time_s": round(p["time_s"], 3), "final_train_loss": _finite_or_none(p["last_train_loss"]),
            "final_val_loss": final_val_loss, "final_val_tokens": final_val_tokens,
            "best_val_loss": p["best_val_loss"], "early_stop_loss": t.early_stop_loss,
            "target_reached_step": p["target_reached_step"], "diverged_at_step": p["diverged_at_step"],
            "peak_mem_bytes": peak, "mem_total_bytes": total, "mem_percent": _percent(peak, total),
            "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s is not None else None,
            "params": self.params, "device": str(self.device), "processes": self.dist.world_size,
            "train_flops_per_token": training_flops_per_token(self.config.model),
            "mfu": self._model_flops_utilization(tokens_per_s or 0.0),
        }
        write_json_atomic(self.out_dir / "summary.json", summary)
        print(f"{self.config.name}: {p['status']} after {p['step']} steps, final validation loss "
              f"{final_val_loss if final_val_loss is None else round(final_val_loss, 4)}", file=sys.stderr)


def _config_difference(saved: dict, current: dict, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first (key, saved, current) that differs, ignoring EXECUTION_KEYS; None if none do."""
    for key in sorted(set(saved) | set(current)):
        dotted = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found = _config_difference(old, new, dotted + ".")
            if found:
                return found
        elif old != new and dotted not in EXECUTION_KEYS:
            return dotted, old, new
    return None


def _progress_bar(total: int, initial: int, name: str, enabled: bool):
    return tqdm(total=total, initial=initial, desc=name, unit="step", disable=not enabled,
                mininterval=1.0 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)


def _start_wandb(config: RunConfig, out_dir: Path):
    """A Weights & Biases run when the package is installed (WANDB_MODE=offline works); else None."""
    try:
        import wandb
    except ImportError:
        print("training.wandb is on but wandb is not installed (pip install 'tinylm[wandb]'); "
              "logging to metrics.jsonl only", file=sys.stderr)
        return None
    return wandb.init(project=os.environ.get("WANDB_PROJECT", "tinylm"), name=config.name,
                      config=config.to_dict(), dir=str(out_dir), resume="allow", id=config.name)
