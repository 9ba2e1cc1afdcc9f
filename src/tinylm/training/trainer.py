"""`tinylm train`: train one Transformer LM from a run config, resumably.

    tinylm train --config RUN.json --out-dir results/runs/RUN --checkpoint-dir results/checkpoints/RUN

Writes OUT_DIR/config.json, metrics.jsonl (one line per logged step), summary.json and model.pt
(weights + config). A checkpoint in CHECKPOINT_DIR is resumed from; the resumed run reproduces the
uninterrupted one bitwise on CPU because the batch of step t depends only on (seed, t) and the
checkpoint carries the model, optimizer, RNG states and progress record. A run that starts from
scratch first removes an earlier run's results from OUT_DIR. One trainer at a time holds
CHECKPOINT_DIR (a second one fails at once, naming the holder).

Steps are queued without the host waiting for the device: loss and gradient norm are read once
per `log_interval` and at evaluations, checkpoints and the end; a bad step (non-finite, or a smoothed
loss past `divergence_factor` times the untrained model's: `DivergenceGuard`) has its update undone
on the device and the run is marked diverged at the next read.

Exit status: 0 when the run completed, stopped early at its target loss, or diverged (a diverged
run is a result); EXIT_PREEMPTED (143 = 128 + SIGTERM) when a SIGTERM stopped it after saving a
checkpoint, so a scheduler can requeue it; 2 for bad input.
"""
from __future__ import annotations

import argparse
import os
import random
import sys

import numpy as np
import torch
from tqdm import tqdm

from tinylm import checkpoint as ckpt
from tinylm.config import RunConfig
from tinylm.data.tokens import (
    check_token_ids,
    load_tokens,
    loss_sum_over_windows,
    sequential_windows,
    validation_starts,
)
from tinylm.files import check_folder
from tinylm.nn import build_model, parameter_count
from tinylm.nn.functional import cross_entropy
from tinylm.optim import AdamW, cosine_lr
from tinylm.training.clock import RunClock
from tinylm.training.distributed import EXIT_PREEMPTED, Distributed, die_with_parent, is_worker, launch_distributed
from tinylm.training.divergence import DivergenceGuard, divergence_outcome
from tinylm.training.hardware import autocast_context, keep_freed_host_memory, resolve_device, synchronize, use_compile
from tinylm.training.memory import memory_percent, memory_stats
from tinylm.training.metrics import MetricsRecord, MetricsWriter, finite_or_none, start_wandb
from tinylm.training.outputs import RunFolder, checkpoint_file
from tinylm.training.prefetch import BatchPrefetcher
from tinylm.training.progress import Progress
from tinylm.training.runlock import run_lock
from tinylm.training.step import TrainingStep, compile_static
from tinylm.training.stopping import PreemptionFlag, budget_reached, checkpoint_due, target_reached
from tinylm.training.summary import summarize, utc_now

__all__ = ["EXIT_PREEMPTED", "Trainer", "add_arguments", "open_token_arrays", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="run config JSON (see tinylm.config.RunConfig)")
    parser.add_argument("--out-dir", required=True, help="metrics.jsonl, summary.json, config.json, model.pt")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="resumable checkpoint.pt (default: OUT_DIR); resumed from when present")


def run(args: argparse.Namespace) -> int:
    # Both folders are checked before either is made, so a bad one leaves nothing behind.
    check_folder(args.out_dir, "--out-dir")
    if args.checkpoint_dir:
        check_folder(args.checkpoint_dir, "--checkpoint-dir")
    config = RunConfig.load(args.config)
    checkpoint_dir = args.checkpoint_dir or args.out_dir
    if is_worker():  # under torchrun, which holds the launcher's lock: this process dies with it
        die_with_parent()
        return Trainer(config, args.out_dir, checkpoint_dir).train()
    with run_lock(checkpoint_dir) as lock_fd:
        if config.training.devices > 1:
            open_token_arrays(config)  # bad input fails here, not in N processes at once
            return launch_distributed(args.config, args.out_dir, checkpoint_dir, config.training.devices, lock_fd)
        return Trainer(config, args.out_dir, checkpoint_dir).train()


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


class Trainer:
    """One training run: setup (or resume), the step loop, evaluations, checkpoints, final outputs."""

    def __init__(self, config: RunConfig, out_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike):
        self.config = config
        self.outputs = RunFolder(out_dir)
        self.checkpoint_path = checkpoint_file(checkpoint_dir)
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
        self.compiled = use_compile(t.compile, self.device)
        self.total_steps = config.total_steps
        self.tokens_per_step = config.tokens_per_step
        self.preemption = PreemptionFlag()

    def train(self) -> int:
        self.dist.start(self.device)
        try:
            with self.preemption.installed():
                self._build()
                if self.progress.status == "running" and self._loop():
                    return EXIT_PREEMPTED
                self._finish()
                return 0
        finally:
            self.dist.stop()

    # -- setup and resume --

    def _build(self) -> None:
        c, t = self.config, self.config.training
        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        random.seed(t.seed)
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for fp32 runs on GPU
        elif self.device.type == "cpu":
            keep_freed_host_memory()
        self.model = build_model(c.model, attention=t.attention, device=self.device)
        self.optimizer = AdamW.from_config(self.model.parameters(), c.optimizer, compiled=self.compiled)
        self.progress = Progress(started_at=utc_now())
        if self.checkpoint_path.is_file():
            self._resume()
        elif self.dist.is_main:
            removed = self.outputs.remove_results()
            if removed:
                print(f"{c.name}: starting from scratch; removed an earlier run's {', '.join(removed)} "
                      f"from {self.outputs.path}", file=sys.stderr)
        self.guard = DivergenceGuard(t.divergence_factor, self.device, self.progress.initial_loss,
                                     self.progress.smoothed_loss)
        # Wrappers go on after loading, so checkpoints always hold the bare model's keys.
        self.training_step = TrainingStep(self.model, self.optimizer, self.precision, c.optimizer.grad_clip, self.guard,
                                 compiled=self.compiled, wrap=self.dist.wrap, reduce_loss=self.dist.mean_on_device)
        self.eval_model = compile_static(self.model) if self.compiled else self.model
        if self.dist.is_main:
            self.outputs.path.mkdir(parents=True, exist_ok=True)
            self.config.save(self.outputs.config)
        self.clock = RunClock(self.progress)
        if self.compiled:
            self._compile_evaluation()

    def _compile_evaluation(self) -> None:
        """Compile the evaluation graph now, by evaluating one window, so that its compilation counts as
        compile time and no evaluation's time includes it (every evaluation batch has this shape)."""
        synchronize(self.device)
        self.clock.resume()
        self._evaluate([(0, self.config.model.context_length)])  # waits for the device: its result is read
        self.clock.lap_compile(steps=0)

    def _resume(self) -> None:
        # Loaded on the CPU: RNG states must stay there; weights and moments move to their parameters.
        state = ckpt.load_training_state(self.checkpoint_path)
        saved = RunConfig.from_dict(state["config"])
        # Where and how a run executes may change between sessions; what it computes may not.
        ours, theirs = self.config.settings(leave_out=("execution",)), saved.settings(leave_out=("execution",))
        mismatch = next(((key, theirs.get(key), value) for key, value in ours.items() if theirs.get(key) != value),
                        None)
        if mismatch:
            key, old, new = mismatch
            raise ValueError(f"checkpoint {str(self.checkpoint_path)!r} belongs to another config "
                             f"({key}: {old!r} there, {new!r} now); delete it to start over")
        ckpt.load_weights(self.model, state["model"], self.checkpoint_path)
        self.optimizer.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        self.progress = state["progress"]
        self.progress.started_at = self.progress.started_at or utc_now()
        if self.dist.is_main:
            print(f"resuming {self.config.name} from {self.checkpoint_path} at step {self.progress.step}",
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
                                             self.config.model.context_length, self.device, cross_entropy,
                                             self.precision)
        summed_total, summed_count = self.dist.sum([total, float(count)], self.device)
        self.eval_model.train()
        return summed_total / summed_count, int(summed_count)

    def _validation_windows(self) -> list[tuple[int, int]]:
        t, context = self.config.training, self.config.model.context_length
        batches = validation_starts(len(self.valid_tokens), t.eval_batches, t.batch_size, context, t.seed)
        return [(int(start), context) for batch in batches for start in batch]

    # -- the loop --

    def _lr(self, step: int) -> float:
        """The schedule at step `step` (1..total): no zero-lr first step, ends at min_lr."""
        o = self.config.optimizer
        return cosine_lr(step, o.lr, o.min_lr, o.warmup_steps, self.total_steps)

    def _loop(self) -> bool:
        """Run steps until the budget, a stop rule or a SIGTERM; True if stopped by SIGTERM."""
        t, p = self.config.training, self.progress
        batches = BatchPrefetcher(self.train_tokens, t.batch_size, self.config.model.context_length, t.seed,
                                  self.dist.rank, self.dist.world_size, self.device)
        self.validation = self._validation_windows()
        wandb_run = start_wandb(self.config.name, self.config.to_dict(), self.outputs.path) \
            if self.dist.is_main and t.wandb else None
        self.metrics = MetricsWriter(self.outputs.metrics, p.metrics_lines, wandb_run) \
            if self.dist.is_main else None
        self.bar = tqdm(total=self.total_steps, initial=p.step, desc=self.config.name, unit="step",
                        disable=not self.dist.is_main, dynamic_ncols=True,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0)
        self.clock.resume()
        compiling = self.compiled  # the session's first step traces and compiles the step's graphs
        self.model.train()
        try:
            while not budget_reached(p.step, self.total_steps):
                inputs, targets = batches.batch(p.step)
                lr = self._lr(p.step + 1)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss, grad_norm = self.training_step(inputs, targets, p.step + 1)
                p.step += 1
                p.tokens += self.tokens_per_step
                if compiling:
                    synchronize(self.device)
                    self.clock.lap_compile(steps=1)
                    compiling = False
                self.bar.update(1)
                checkpoint = checkpoint_due(p.step, t.checkpoint_interval, self.total_steps)
                line = p.step % t.log_interval == 0 or p.step % t.eval_interval == 0 \
                    or budget_reached(p.step, self.total_steps)
                # Several processes agree on a SIGTERM only where the host waits anyway: their
                # collective is a host-side sync.
                preempt = self.dist.any(self.preemption.requested) \
                    if line or checkpoint or self.dist.world_size == 1 else False
                if line or checkpoint or preempt:  # the only points where the host waits for the device
                    self._read(loss, grad_norm, lr, write_line=line)
                if p.status != "running":
                    return False
                if preempt or checkpoint:
                    self._save_checkpoint()
                    self.clock.resume()
                if preempt:
                    if self.dist.is_main:
                        print(f"SIGTERM: checkpoint saved at step {p.step}; exiting with {EXIT_PREEMPTED}",
                              file=sys.stderr)
                    return True
            p.status = "completed"
            return False
        finally:
            batches.close()
            self.bar.close()
            if self.metrics is not None:
                self.metrics.close()

    def _read(self, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, write_line: bool) -> None:
        """Bring the step's numbers to the host; apply divergence, evaluation and early stop; log."""
        t, p = self.config.training, self.progress
        bad = self.guard.read()
        if bad is not None:
            step, loss_value, norm_value = bad
            p.status, p.diverged_at_step = "diverged", step
            p.step, p.tokens = divergence_outcome(step, self.tokens_per_step)
            lr, write_line = self._lr(step), True
        else:
            loss_value, norm_value = loss.item(), grad_norm.item()
        self.clock.lap()
        # the guard's check of this step set both
        assert self.guard.initial_loss is not None and self.guard.smoothed_loss is not None
        p.initial_loss, p.smoothed_loss = float(self.guard.initial_loss), float(self.guard.smoothed_loss)
        p.last_train_loss = loss_value
        val_loss = None
        if p.status == "running" and p.step % t.eval_interval == 0:
            val_loss, _ = self._evaluate(self.validation)
            p.best_val_loss = val_loss if p.best_val_loss is None else min(p.best_val_loss, val_loss)
            if target_reached(val_loss, t.early_stop_loss):
                p.status, p.target_reached_step = "early_stopped", p.step
        if write_line and self.metrics is not None:
            self.metrics.write(self._metrics_record(lr, loss_value, norm_value, val_loss))
        self.bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", refresh=False)
        self.clock.resume()

    def _metrics_record(self, lr: float, loss: float, grad_norm: float, val_loss: float | None) -> MetricsRecord:
        allocated, peak, total = memory_stats(self.device)
        p = self.progress
        rate = self.clock.tokens_per_s_since_line(self.tokens_per_step)
        return MetricsRecord(step=p.step, tokens=p.tokens, time_s=round(p.time_s, 3), lr=lr,
                             train_loss=finite_or_none(loss), grad_norm=finite_or_none(grad_norm),
                             tokens_per_s=None if rate is None else round(rate, 1), val_loss=val_loss,
                             mem_allocated_bytes=allocated, mem_peak_bytes=peak, mem_total_bytes=total,
                             mem_percent=memory_percent(peak, total))

    # -- final outputs --

    def _finish(self) -> None:
        """Final evaluation on the validation array; checkpoint, model.pt and summary.json."""
        p, t = self.progress, self.config.training
        # Saved first: a job killed during the (possibly long) final evaluation reruns only that.
        self._save_checkpoint()
        final_val_loss, final_val_tokens = None, 0
        if p.status != "diverged":
            windows = sequential_windows(len(self.valid_tokens), self.config.model.context_length,
                                         t.final_eval_tokens)
            final_val_loss, final_val_tokens = self._evaluate(windows)
            p.best_val_loss = final_val_loss if p.best_val_loss is None else min(p.best_val_loss, final_val_loss)
        if not self.dist.is_main:
            return
        ckpt.save_model(self.outputs.model, self.model, self.config)
        summarize(self.config, p, self.device, self.dist.world_size, self.compiled, final_val_loss,
                  final_val_tokens, parameter_count(self.config.model)).write(self.outputs.summary)
        print(f"{self.config.name}: {p.status} after {p.step} steps, final validation loss "
              f"{final_val_loss if final_val_loss is None else round(final_val_loss, 4)}", file=sys.stderr)
