"""A tiny synthetic corpus and run config that trains in about a second, for the training tests."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from tinylm.cli import main
from tinylm.config import RunConfig
from tinylm.training.summary import Provenance, Summary

VOCAB = 64
# What a resumed or multi-process run must reproduce; time, throughput and memory legitimately differ.
TRAJECTORY_KEYS = ("step", "tokens", "lr", "train_loss", "grad_norm", "val_loss")


def write_corpus(directory: Path, num_tokens: int = 24_000) -> tuple[Path, Path]:
    """A noisy repeating pattern: learnable in a few dozen steps, so losses fall visibly."""
    rng = np.random.default_rng(1234)
    pattern = np.tile(np.arange(48), num_tokens // 48 + 1)[:num_tokens]
    noise = rng.integers(0, VOCAB, size=num_tokens)
    tokens = np.where(rng.random(num_tokens) < 0.1, noise, pattern).astype(np.uint16)
    split = num_tokens * 5 // 6
    train, valid = directory / "train.npy", directory / "valid.npy"
    np.save(train, tokens[:split])
    np.save(valid, tokens[split:])
    return train, valid


def write_config(directory: Path, name: str = "tiny", **sections) -> Path:
    """A run config JSON; `sections` update the defaults, e.g. training={"max_steps": 10}."""
    directory.mkdir(parents=True, exist_ok=True)
    train, valid = write_corpus(directory)
    config = {
        "name": name,
        "model": {"vocab_size": VOCAB, "context_length": 32, "d_model": 32, "num_layers": 2,
                  "num_heads": 4, "d_ff": 64},
        "optimizer": {"lr": 3e-3, "warmup_steps": 5},
        "training": {"batch_size": 8, "max_steps": 40, "eval_interval": 10, "eval_batches": 2,
                     "log_interval": 5, "checkpoint_interval": 20, "device": "cpu", "seed": 7},
        "data": {"train_tokens": str(train), "valid_tokens": str(valid)},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    path = directory / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded: tiny models gain nothing from threads, and on a busy machine
    a thread waiting for its core at every operation slows them down a hundredfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(config: Path, out_dir: Path, checkpoint_dir: Path) -> int:
    """`tinylm train` in this process."""
    return main(["train", "--config", str(config), "--out-dir", str(out_dir),
                 "--checkpoint-dir", str(checkpoint_dir)])


def start_train(config: Path, out_dir: Path, checkpoint_dir: Path) -> subprocess.Popen:
    """`tinylm train` as a child process (for killing it)."""
    return subprocess.Popen([sys.executable, "-m", "tinylm", "train", "--config", str(config),
                             "--out-dir", str(out_dir), "--checkpoint-dir", str(checkpoint_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def signal_after_first_checkpoint(process: subprocess.Popen, checkpoint_dir: Path, signum: int,
                                  timeout_s: float = 120.0) -> None:
    """Send `signum` as soon as the run has written its first checkpoint (i.e. mid-run)."""
    checkpoint = checkpoint_dir / "checkpoint.pt"
    deadline = time.monotonic() + timeout_s
    while not checkpoint.exists():
        if process.poll() is not None:
            raise AssertionError(f"training ended before its first checkpoint:\n{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no checkpoint appeared in time")
        time.sleep(0.005)
    process.send_signal(signum)


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def trajectory(out_dir: Path) -> list[tuple]:
    return [tuple(record[key] for key in TRAJECTORY_KEYS) for record in read_metrics(out_dir)]


def read_summary(out_dir: Path) -> dict:
    return json.loads((out_dir / "summary.json").read_text())


def write_summary(run_dir: Path, name: str | None = None, **fields) -> Path:
    """A complete summary.json in `run_dir`: `fields` as given, placeholders for the rest."""
    provenance = Provenance(git_commit=None, git_dirty=None, lock=None, tinylm_version="0",
                            torch_version=torch.__version__,
                            python_version="3", device_name="test CPU", cuda_version=None, hostname="test",
                            platform="test", started_at=None, command="test")
    defaults = dict(status="completed", steps=1, tokens=1, time_s=1.0, train_time_s=1.0, final_train_loss=None,
                    final_val_loss=None, final_val_tokens=0, best_val_loss=None, early_stop_loss=None,
                    target_reached_step=None, diverged_at_step=None, peak_mem_bytes=0, mem_total_bytes=1,
                    mem_percent=0.0, tokens_per_s=None, params=0, device="cpu", processes=1, compiled=False,
                    train_flops_per_token=0, peak_flops_per_device=None, mfu=None, provenance=provenance)
    fields["provenance"] = dataclasses.replace(provenance, **fields.get("provenance", {})) \
        if isinstance(fields.get("provenance"), dict) else fields.get("provenance", provenance)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    path = Path(run_dir) / "summary.json"
    Summary(name=name or Path(run_dir).name, **{**defaults, **fields}).write(path)
    return path


def write_run(run_dir: Path, lr: float, final_val: float | None, steps: int = 20, tokens: Path | None = None,
              vocab_size: int = 10000, warmup_steps: int = 0, seed: int = 0) -> Path:
    """A finished run's three files: a loss falling towards `final_val`, or diverging when it is None.
    `tokens`: the token array the run trained and was validated on (default: none there)."""
    train, valid = (str(tokens), str(tokens)) if tokens else ("t.npy", "v.npy")
    config = RunConfig().with_overrides({"name": run_dir.name, "optimizer.lr": lr, "training.max_steps": steps,
                                         "optimizer.warmup_steps": warmup_steps, "data.train_tokens": train,
                                         "data.valid_tokens": valid, "model.vocab_size": vocab_size,
                                         "training.seed": seed})
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    diverged = final_val is None
    last = steps // 2 if diverged else steps
    lines = []
    for step in range(1, last + 1):
        loss = 5.0 * 3 ** (step - last + 2) if diverged and step > last - 3 else 5.0 - step * 0.1
        lines.append({"step": step, "tokens": step * 64, "time_s": step * 0.1,
                      "lr": lr * min(1.0, step / warmup_steps) if warmup_steps else lr, "train_loss": loss,
                      "val_loss": loss + 0.1 if step % 5 == 0 else None})
    if diverged:
        lines[-1]["train_loss"] = None  # non-finite loss, logged as null
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    write_summary(run_dir, status="diverged" if diverged else "completed", steps=last, final_val_loss=final_val,
                  final_train_loss=None if diverged else final_val - 0.1, best_val_loss=final_val,
                  diverged_at_step=last if diverged else None, params=1000,
                  divergence_reference_loss=lines[0]["train_loss"])
    return run_dir
