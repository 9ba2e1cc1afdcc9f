"""Two CPU choices of the trainer, timed: the attention kernel under bf16, and keeping freed memory.

    python benchmarks/bench_cpu_kernels.py [--repeats 20]

1. Attention (`MultiHeadSelfAttention._attend` on the CPU): forward and backward of one attention
   layer at the default config's baseline size and at the experiment log's reference size, with
   torch's flash kernel in bf16 and in fp32, bf16 matmuls around torch's softmax (what `fused`
   runs on the CPU under bf16 autocast) and the reference formula in bf16.
2. Freed memory (`keep_freed_host_memory`): a step-sized product into a fresh buffer, each time,
   with glibc's default settings and with the trainer's (each in a process of its own, since the
   settings hold for the whole process), against the same product into a buffer kept.

One thread, best of `--repeats`, setups interleaved so that load from other processes hits all
alike. Prints a table and writes benchmarks/results/cpu_kernels.{json,md}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tinylm.files import write_json_atomic, write_text_atomic
from tinylm.nn import MultiHeadSelfAttention, RotaryPositionalEmbedding
from tinylm.training.hardware import device_name

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# (batch, context, d_model, heads): the default config's baseline run, and the experiment log's size.
SIZES = {"baseline": (8, 128, 128, 4), "reference": (4, 256, 512, 16)}
BUFFER = (1024, 2000)  # one (tokens x vocabulary) float32 tensor of the default baseline's step


def flash(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def attention_setups(size: tuple[int, int, int, int]) -> dict[str, Callable[[], None]]:
    """setup name -> a function running forward and backward of one attention layer once."""
    batch, context, d_model, heads = size
    torch.manual_seed(0)
    x = torch.randn(batch, context, d_model)

    def layer(attention: str):
        rope = RotaryPositionalEmbedding(10000.0, d_model // heads, context)
        return MultiHeadSelfAttention(d_model, heads, rope=rope, attention=attention)

    def run(module, precision: torch.dtype | None, kernel=None):
        def once():
            inputs = x.detach().requires_grad_()
            autocast = torch.autocast("cpu", dtype=precision) if precision else contextlib.nullcontext()
            with autocast, (contextlib.nullcontext() if kernel is None else _patched_attend(module, kernel)):
                out = module(inputs)
            out.float().sum().backward()
        return once

    return {"flash bf16": run(layer("fused"), torch.bfloat16, flash),
            "flash fp32": run(layer("fused"), None, flash),
            "softmax bf16 (fused on the CPU)": run(layer("fused"), torch.bfloat16),
            "reference bf16": run(layer("reference"), torch.bfloat16)}


@contextlib.contextmanager
def _patched_attend(module: MultiHeadSelfAttention, kernel):
    """Run `kernel` where the module would choose its own path (to time the kernel it does not choose)."""
    module._attend = kernel
    try:
        yield
    finally:
        del module._attend


def best_times(setups: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best seconds of each setup over `repeats` interleaved rounds (after one warm-up round)."""
    best = dict.fromkeys(setups, float("inf"))
    for round_ in range(repeats + 1):
        for name, once in setups.items():
            started = time.perf_counter()
            once()
            if round_:
                best[name] = min(best[name], time.perf_counter() - started)
    return best


def buffer_times(repeats: int) -> dict[str, float]:
    """In this process: best seconds of a product into a fresh buffer, and into a kept one."""
    a, b = torch.rand(BUFFER), torch.rand(BUFFER)
    kept = torch.empty(BUFFER)

    def fresh():
        return a * b

    def reuse():
        torch.mul(a, b, out=kept)

    return best_times({"fresh": fresh, "kept": reuse}, repeats)


def buffers_in_a_process(keep: bool, repeats: int) -> dict[str, float]:
    code = ("import json, sys, torch; torch.set_num_threads(1); "
            "from benchmarks.bench_cpu_kernels import buffer_times; from tinylm.training.hardware import "
            "keep_freed_host_memory; keep = sys.argv[1] == '1'; kept = keep and keep_freed_host_memory(); "
            "print(json.dumps({'settings_taken': kept, **buffer_times(int(sys.argv[2]))}))")
    path = os.pathsep.join([str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code, "1" if keep else "0", str(repeats)], capture_output=True,
                            text=True, env=env, check=True)
    return json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    attention = {name: best_times(attention_setups(size), args.repeats) for name, size in SIZES.items()}
    buffers = {"glibc defaults": buffers_in_a_process(False, args.repeats),
               "keep_freed_host_memory": buffers_in_a_process(True, args.repeats)}
    meta = {"cpu": device_name(torch.device("cpu")), "cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "threads": 1, "repeats": args.repeats,
            "load_average_before": load, "load_average_after": os.getloadavg()[0]}
    result = {"meta": meta, "sizes": SIZES, "attention_s": attention, "buffer_s": buffers}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS / "cpu_kernels.json", result)
    write_text_atomic(RESULTS / "cpu_kernels.md", markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [f"# CPU kernels: {meta['cpu']}", "",
             f"torch {meta['torch']}, {meta['threads']} thread of {meta['cpus']}, best of {meta['repeats']} "
             f"interleaved rounds; 1-minute load average {meta['load_average_before']:.1f} before, "
             f"{meta['load_average_after']:.1f} after.", "",
             "## Attention: forward and backward of one layer (ms)", "",
             "| setup | " + " | ".join(f"{name} {tuple(result['sizes'][name])}" for name in result["sizes"]) + " |",
             "|---|" + "---:|" * len(result["sizes"])]
    for setup in next(iter(result["attention_s"].values())):
        lines.append(f"| {setup} | " + " | ".join(f"{result['attention_s'][size][setup] * 1e3:.1f}"
                                                  for size in result["sizes"]) + " |")
    lines += ["", "(batch, context, d_model, heads). The trainer's choice under CPU bf16 autocast is the softmax row.",
              "", f"## A product of two {BUFFER[0]} x {BUFFER[1]} float32 tensors (ms)", "",
              "| allocator settings | into a fresh buffer | into a kept buffer |", "|---|---:|---:|"]
    for settings, times in result["buffer_s"].items():
        taken = "" if times["settings_taken"] or settings == "glibc defaults" else " (not taken: no glibc)"
        lines.append(f"| {settings}{taken} | {times['fresh'] * 1e3:.2f} | {times['kept'] * 1e3:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
