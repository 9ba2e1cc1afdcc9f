"""A tiny synthetic corpus and run config that trains in about a second, for the training tests."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from tinylm.cli import main

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
