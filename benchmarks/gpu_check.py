"""The first run on a GPU: tests, bf16+compile against fp32, throughput and MFU, max batch, DDP.

    benchmarks/gpu_check.sh RESULTS_DIR              # on a GPU machine (RESULTS_DIR defaults to $OUT)
    benchmarks/gpu_check.sh RESULTS_DIR --device cpu --quick   # the same checks, tiny, on a CPU (CI runs it)

Needs only PyTorch, numpy, tqdm and pytest (transformers is not used): the package runs from
`src/` with its pure-Python paths, nothing is installed. Each section is timed and recorded even
when it fails; the results go to RESULTS_DIR/gpu_check.json and gpu_check.md after every section,
so a run cut short keeps what it measured. The whole check has a time limit (`--time-limit`): a
section that would not fit in what is left is skipped, with the reason written, instead of being cut
off half-way. Only the sections that measure compiled speed compile.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from tinylm.config import ModelConfig, RunConfig
from tinylm.files import write_json_atomic, write_text_atomic
from tinylm.nn import build_model, model_flops_utilization, parameter_count, training_flops_per_token
from tinylm.optim import AdamW
from tinylm.training.distributed import EXIT_PREEMPTED
from tinylm.training.divergence import DivergenceGuard
from tinylm.training.hardware import autocast_context, device_name, synchronize
from tinylm.training.max_batch import probe_max_batch
from tinylm.training.peak_flops import peak_flops
from tinylm.training.step import TrainingStep
from tinylm.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
REFERENCE = ModelConfig(vocab_size=10000, context_length=256, d_model=512, d_ff=1344, num_layers=4, num_heads=16)
GPU_TARGET_TOKENS_PER_S = 1_100_000  # 327.68M tokens in under 5 minutes
QUICK = ModelConfig(vocab_size=256, context_length=32, d_model=64, d_ff=172, num_layers=2, num_heads=4)
# The time each section is given before it starts (seconds; budgets with room for a cold compile
# cache, not measurements): full mode on a GPU, quick mode on a CPU.
BUDGETS = {
    "cuda_tests": (150, 60), "throughput": (120, 90), "bf16_compile_vs_fp32": (120, 90),
    "max_batch": (60, 30), "ddp_2_processes": (90, 90), "trainer_throughput": (90, 60),
}


def markov_tokens(vocab: int, count: int, seed: int) -> np.ndarray:
    """A learnable corpus: each token has four likely successors, so the loss falls well below ln(vocab)."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab, size=(vocab, 4))
    choices, noise = rng.integers(0, 4, size=count), rng.random(count) < 0.1
    tokens = np.empty(count, dtype=np.uint16)
    tokens[0] = 0
    for i in range(1, count):
        tokens[i] = rng.integers(vocab) if noise[i] else successors[tokens[i - 1], choices[i]]
    return tokens


class Check:
    """The results of the whole check, written after every section so a timeout loses nothing."""

    def __init__(self, out: Path, meta: dict, deadline: float, quick: bool):
        self.out, self.deadline, self.quick = out, deadline, quick
        self.result = {"meta": meta, "sections": {}}

    def section(self, name: str, function, *args) -> None:
        print(f"== {name}", flush=True)
        budget, left = BUDGETS[name][self.quick], self.deadline - time.monotonic()
        started = time.perf_counter()
        if left < budget:
            record = {"status": "skipped",
                      "reason": f"needs up to {budget} s; {left:.0f} s of the check's time limit were left"}
        else:
            try:
                record = {"status": "ok", **function(*args)}
            except Exception as error:  # a failed check is a result too; the next section still runs
                traceback.print_exc()
                record = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        record["seconds"] = round(time.perf_counter() - started, 1)
        self.result["sections"][name] = record
        print(json.dumps(record)[:2000], flush=True)
        write_json_atomic(self.out / "gpu_check.json", self.result)
        write_text_atomic(self.out / "gpu_check.md", markdown(self.result))


def run_tests() -> dict:
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
               "tests/training/test_cuda.py"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=BUDGETS["cuda_tests"][0])
    tail = (result.stdout + result.stderr).strip().splitlines()
    if result.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest exited {result.returncode}: {tail[-1] if tail else ''}")
    return {"summary": tail[-1] if tail else "", "returncode": result.returncode}


def run_config(work: Path, model: ModelConfig, steps: int, batch: int, device: str, **training) -> RunConfig:
    tokens = markov_tokens(model.vocab_size, max(200_000, batch * model.context_length * 4), seed=0)
    np.save(work / "train.npy", tokens[: len(tokens) * 9 // 10])
    np.save(work / "valid.npy", tokens[len(tokens) * 9 // 10:])
    return RunConfig.from_dict({
        "name": "gpu-check", "model": model.__dict__, "optimizer": {"lr": 3e-3, "warmup_steps": min(20, steps)},
        "training": {"batch_size": batch, "max_steps": steps, "log_interval": 10, "eval_interval": steps,
                     "eval_batches": 2, "final_eval_tokens": 20_000, "checkpoint_interval": steps,
                     "device": device, "attention": "fused", "compile": False, **training},
        "data": {"train_tokens": str(work / "train.npy"), "valid_tokens": str(work / "valid.npy")}})


def train_losses(config: RunConfig, work: Path) -> tuple[list[float], dict]:
    status = Trainer(config, work / "out", work / "ckpt").train()
    if status == EXIT_PREEMPTED:
        raise RuntimeError("the trainer stopped at a SIGTERM (the check's outer time limit) after saving a checkpoint")
    if status != 0:
        raise RuntimeError(f"the trainer exited with status {status}")
    summary = json.loads((work / "out" / "summary.json").read_text())
    if summary["status"] != "completed":
        raise RuntimeError(f"the run ended {summary['status']} at step {summary['steps']}")
    lines = [json.loads(line) for line in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    return [line["train_loss"] for line in lines], summary


def precision_agreement(model: ModelConfig, steps: int, batch: int, device: str) -> dict:
    """bf16 autocast + torch.compile against fp32 eager: the same run, the loss curves must agree."""
    curves, summaries = {}, {}
    for label, settings in {"fp32": {"precision": "fp32", "compile": False},
                            "bf16+compile": {"precision": "bf16", "compile": True}}.items():
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            config = run_config(work, model, steps, batch, device, **settings)
            curves[label], summaries[label] = train_losses(config, work)
    reference, fast = curves["fp32"], curves["bf16+compile"]
    relative = [abs(a - b) / b for a, b in zip(fast, reference)]
    # bf16 rounding moves single steps by ~1%; a broken cast or kernel moves the whole curve.
    if max(relative) >= 0.05 or abs(fast[-1] - reference[-1]) / reference[-1] >= 0.02:
        raise AssertionError(f"bf16+compile loss curve departs from fp32: max relative gap {max(relative):.3f}")
    return {"steps": steps, "batch": batch, "fp32_final_loss": reference[-1], "bf16_compile_final_loss": fast[-1],
            "max_relative_gap": max(relative), "fp32_first_loss": reference[0],
            "compile_time_s": summaries["bf16+compile"]["compile_time_s"],
            "final_val_loss": {k: s["final_val_loss"] for k, s in summaries.items()}}


def step_rate(model_config: ModelConfig, batch: int, device: torch.device, precision: str, compiled: bool,
              steps: int) -> float:
    """Tokens/s of the trainer's own step (`TrainingStep`, divergence guard included) after warm-up."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(model_config, attention="fused", device=device)
    optimizer = AdamW(model.parameters(), lr=1e-3, compiled=compiled)
    # A factor no random-batch loss reaches: the guard's cost is timed, it never rejects a step.
    step = TrainingStep(model, optimizer, autocast_context(device, precision), 1.0, DivergenceGuard(1e9, device),
                        compiled=compiled)
    tokens = torch.randint(model_config.vocab_size, (batch, model_config.context_length + 1), device=device)
    for number in range(1, 4):  # the first compiles, when compiled
        step(tokens[:, :-1], tokens[:, 1:], number)
    synchronize(device)
    started = time.perf_counter()
    for number in range(4, 4 + steps):
        step(tokens[:, :-1], tokens[:, 1:], number)
    synchronize(device)
    return steps * batch * model_config.context_length / (time.perf_counter() - started)


def throughput(model_config: ModelConfig, batches: list[int], compiled_batch: int, device_name_: str,
               steps: int) -> dict:
    """Tokens/s and MFU of one training step: eager at every batch, compiled at one (each compile costs)."""
    device = torch.device(device_name_)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    precision = "bf16" if device.type == "cuda" else "fp32"
    peak = peak_flops(device_name(device), precision) if device.type == "cuda" else None
    rows = []
    for batch, compiled in [(b, False) for b in batches] + [(compiled_batch, True)]:
        rate = step_rate(model_config, batch, device, precision, compiled, steps)
        rows.append({"batch": batch, "compiled": compiled, "precision": precision, "tokens_per_s": round(rate),
                     "mfu": None if peak is None else model_flops_utilization(rate, model_config, peak)})
        print(rows[-1], flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"model": model_config.__dict__, "peak_flops": peak, "params": parameter_count(model_config),
            "training_flops_per_token": training_flops_per_token(model_config), "rows": rows}


def trainer_throughput(model_config: ModelConfig, batch: int, steps: int, device: str) -> dict:
    """The whole loop (prefetch, guard, logging, evaluation) at one batch, compiled on CUDA, against the
    bare step above; its throughput excludes the compiling step (compile_time_s)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        precision = "bf16" if device == "cuda" else "fp32"
        _, summary = train_losses(run_config(work, model_config, steps, batch, device, precision=precision,
                                             compile=device == "cuda"), work)
    return {key: summary[key] for key in ("tokens_per_s", "mfu", "compiled", "compile_time_s", "train_time_s",
                                          "time_s", "steps")}


def max_batch(model_config: ModelConfig, device: str, quick: bool) -> dict:
    """Double the batch until a real out-of-memory (on CPU, which has none: a memory budget). The
    probe's steps run eager here (compiling every batch size would not fit the check's time)."""
    config = RunConfig.from_dict({"model": model_config.__dict__, "optimizer": {"warmup_steps": 0}, "training": {
        "max_steps": 1, "device": device, "precision": "bf16" if device == "cuda" else "fp32",
        "attention": "fused", "compile": False}, "data": {"train_tokens": "-", "valid_tokens": "-"}})
    budget = 64 * 2**20 if device == "cpu" else None
    result = probe_max_batch(config, budget, max_batch=64 if quick else 1 << 20)
    if device == "cuda" and result["tried"][-1]["peak_bytes"] is not None:
        raise AssertionError("the probe stopped before an out-of-memory error")
    return {"largest_batch": result["largest_batch"], "total_memory": result["total_memory"],
            "tried": result["tried"]}


def two_process_ddp(model_config: ModelConfig, device: str) -> dict:
    """2 processes (NCCL on GPUs, gloo on CPU) against 1: the same trajectory."""
    finals = {}
    with tempfile.TemporaryDirectory() as tmp:
        for devices in (1, 2):
            work = Path(tmp) / str(devices)
            work.mkdir()
            config = run_config(work, model_config, 40, 8, device, devices=devices)
            config.save(work / "run.json")
            env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
            result = subprocess.run([sys.executable, "-m", "tinylm", "train", "--config", str(work / "run.json"),
                                     "--out-dir", str(work / "out"), "--checkpoint-dir", str(work / "ckpt")],
                                    capture_output=True, text=True, env=env, timeout=BUDGETS["ddp_2_processes"][0])
            if result.returncode != 0:
                raise RuntimeError(f"{devices} process(es) exited {result.returncode}: {result.stderr[-500:]}")
            finals[devices] = json.loads((work / "out" / "summary.json").read_text())["final_val_loss"]
    gap = abs(finals[2] - finals[1]) / finals[1]
    if gap > 1e-3:
        raise AssertionError(f"2 processes end at validation loss {finals[2]}, 1 process at {finals[1]}")
    return {"final_val_loss_1_process": finals[1], "final_val_loss_2_processes": finals[2], "relative_gap": gap}


def markdown(result: dict) -> str:
    meta, sections = result["meta"], result["sections"]
    lines = [f"# GPU check: {meta['device_name']}", "",
             f"torch {meta['torch']}, CUDA {meta['cuda']}, Python {meta['python']}, {meta['gpus']} GPU(s); "
             f"mode {'quick' if meta['quick'] else 'full'}; time limit {meta['time_limit_s']} s; "
             f"started {meta['started']}.", "",
             "| check | status | seconds | result |", "|---|---|---:|---|"]
    for name, record in sections.items():
        shown = {k: v for k, v in record.items() if k not in ("status", "seconds", "rows", "tried", "model")}
        lines.append(f"| {name} | {record['status']} | {record['seconds']} | {json.dumps(shown)[:300]} |")
    rows = sections.get("throughput", {}).get("rows")
    if rows:
        m = sections["throughput"]["model"]
        lines += ["", f"## Throughput of one training step: vocab {m['vocab_size']}, ctx {m['context_length']}, "
                  f"d_model {m['d_model']}, d_ff {m['d_ff']}, {m['num_layers']} layers, {m['num_heads']} heads", "",
                  "| batch | compiled | precision | tokens/s | MFU |", "|---:|---|---|---:|---:|"]
        lines += [f"| {r['batch']} | {r['compiled']} | {r['precision']} | {r['tokens_per_s']:,} | "
                  f"{'unknown' if r['mfu'] is None else format(r['mfu'], '.1%')} |" for r in rows]
        target = [r for r in rows if r["batch"] == 128 and r["compiled"] and r["precision"] == "bf16"]
        if target:
            rate = target[0]["tokens_per_s"]
            lines += ["", f"Issue 14's target, >= {GPU_TARGET_TOKENS_PER_S:,} tokens/s at batch 128 "
                      "(bf16, compiled) on an "
                      f"H100-class GPU: {rate:,} here, {'met' if rate >= GPU_TARGET_TOKENS_PER_S else 'missed'}."]
    tried = sections.get("max_batch", {}).get("tried")
    if tried:
        lines += ["", "## Max-batch probe", "", "| batch | peak bytes | fits |", "|---:|---:|---|"]
        lines += [f"| {t['batch']} | {t['peak_bytes']} | {t['fits']} |" for t in tried]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=os.environ.get("OUT"), help="results folder (default: $OUT)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps (for a CPU dry run)")
    parser.add_argument("--time-limit", type=float, default=450.0,
                        help="seconds for the whole check; sections that would not fit are skipped (default 450)")
    args = parser.parse_args()
    if not args.out:
        parser.error("give a results folder or set $OUT")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device (use --device cpu --quick for a dry run)")
    deadline = time.monotonic() + args.time_limit
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # the quick model gains nothing from threads, and a busy machine's cores stall them
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    meta = {"device_name": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "gpus": gpus, "quick": args.quick, "time_limit_s": args.time_limit,
            "hostname": platform.node(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    check = Check(out, meta, deadline, args.quick)
    model = QUICK if args.quick else REFERENCE
    # Most wanted first: a run cut short by its time limit keeps the sections already done.
    check.section("cuda_tests", run_tests)
    check.section("throughput", throughput, model, [2, 4] if args.quick else [64, 128, 256],
                  4 if args.quick else 128, args.device, 3 if args.quick else 20)
    check.section("bf16_compile_vs_fp32", precision_agreement, model, 20 if args.quick else 200,
                  4 if args.quick else 64, args.device)
    check.section("max_batch", max_batch, model, args.device, args.quick)
    if gpus >= 2 or args.device == "cpu":
        check.section("ddp_2_processes", two_process_ddp, QUICK, args.device)
    check.section("trainer_throughput", trainer_throughput, model, 4 if args.quick else 128,
                  20 if args.quick else 300, args.device)
    statuses = {name: record["status"] for name, record in check.result["sections"].items()}
    failed = [name for name, status in statuses.items() if status == "failed"]
    skipped = [name for name, status in statuses.items() if status == "skipped"]
    print(f"results in {out}/gpu_check.json and .md; failed: {', '.join(failed) or 'none'}; "
          f"skipped: {', '.join(skipped) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
