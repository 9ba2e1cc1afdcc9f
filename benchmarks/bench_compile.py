"""Does `torch.compile` pay for itself in a whole training run? Eager vs compiled `tinylm train`.

    python benchmarks/bench_compile.py --threads 1

Trains the default config's baseline run (config/config.yaml `baseline`: model, optimizer and
training, with the baseline tokenizer's vocabulary) on random tokens, once eager and once compiled,
each in a fresh process, and reports the wall time of the whole command. The compiled run is timed
with an empty compile cache (the first run on a machine) and again with the cache it left (every
later run of the same shape). This decides what `training.compile: auto` does on the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from tinylm.files import write_json_atomic, write_text_atomic
from tinylm.training.hardware import device_name

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def baseline_run_config(config_file: Path, data_dir: Path) -> dict:
    """The default config's baseline run as a run config, on random tokens of its vocabulary."""
    config = yaml.safe_load(config_file.read_text())
    baseline = config["baseline"]
    vocab = config["tokenizers"][baseline["tokenizer"]]["vocab_size"]
    rng = np.random.default_rng(0)
    for split, size in (("train", 600_000), ("valid", 150_000)):
        np.save(data_dir / f"{split}.npy", rng.integers(0, vocab, size, dtype=np.uint16))
    return {"name": "baseline", "model": {**baseline["model"], "vocab_size": vocab},
            "optimizer": baseline["optimizer"], "training": baseline["training"],
            "data": {"train_tokens": str(data_dir / "train.npy"), "valid_tokens": str(data_dir / "valid.npy")}}


def timed_run(run_config: dict, compile_setting: bool, work: Path, label: str, env: dict) -> dict:
    config = {**run_config, "training": {**run_config["training"], "compile": compile_setting}}
    path = work / f"{label}.json"
    path.write_text(json.dumps(config))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tinylm", "train", "--config", str(path), "--out-dir",
                    str(work / label), "--checkpoint-dir", str(work / label / "ckpt")],
                   check=True, env=env, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    summary = json.loads((work / label / "summary.json").read_text())
    return {"setup": label, "compile": compile_setting, "wall_s": round(wall, 2),
            "train_time_s": summary["train_time_s"], "tokens_per_s": summary["tokens_per_s"],
            "final_val_loss": summary["final_val_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "compile_cpu"), help="output path without extension")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_config = baseline_run_config(Path(args.config), work)
        run_config["training"]["device"] = "cpu"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TORCHINDUCTOR_CACHE_DIR": str(work / "cache")}
        load_before = os.getloadavg()[0]
        rows = [timed_run(run_config, False, work, "eager", env),
                timed_run(run_config, True, work, "compiled, empty cache", env),
                timed_run(run_config, True, work, "compiled, warm cache", env)]
        load_after = os.getloadavg()[0]
    meta = {"machine": device_name(torch.device("cpu")), "cpus": os.cpu_count(),
            "threads": args.threads, "load_average_before": round(load_before, 1),
            "load_average_after": round(load_after, 1), "model": run_config["model"],
            "steps": run_config["training"]["max_steps"], "batch_size": run_config["training"]["batch_size"]}
    lines = [f"# Whole `tinylm train` of the default baseline run, eager vs compiled (CPU, {args.threads} thread)", "",
             f"Model {meta['model']}, {meta['steps']} steps at batch {meta['batch_size']}, random tokens; "
             f"{meta['cpus']}-CPU {meta['machine']} machine shared with other jobs, 1-minute load average "
             f"{meta['load_average_before']} before, "
             f"{meta['load_average_after']} after.", "",
             "| setup | wall s (whole command) | training s | tokens/s (training) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['setup']} | {r['wall_s']} | {r['train_time_s']} | {r['tokens_per_s']:,.0f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    write_json_atomic(args.out + ".json", {"meta": meta, "rows": rows})
    write_text_atomic(args.out + ".md", text)


if __name__ == "__main__":
    main()
