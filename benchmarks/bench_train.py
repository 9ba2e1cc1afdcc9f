"""Training throughput of tinylm's TransformerLM against Hugging Face LlamaForCausalLM.

Both models have identical shapes (vocab, d_model, d_ff, layers, heads, context, rope_theta; no
biases; untied embeddings; RMSNorm eps 1e-5); before timing, our weights are copied into the peer
and the logits compared, which shows the two compute the same function. One training step is
forward + cross-entropy + backward + gradient clipping + AdamW step, on the same random batch.

    python benchmarks/bench_train.py --threads 1   # both sizes, CPU (or the GPU when there is one)
    python benchmarks/bench_train.py --sizes reference --rounds 5

Sizes: `baseline`, the default config's baseline run (config/config.yaml `baseline.model` with the
baseline tokenizer's vocabulary and `baseline.training.batch_size`, read from the file), and
`reference`, the experiment log's size (vocab 10000, ctx 256, d_model 512, d_ff 1344, 4 layers,
16 heads) at batch 4 on the CPU, 128 on a GPU. Each size has a target ratio (issue 14) of the
setup the default config trains with (its attention and precision; compiled where
`training.compile` would compile on this device) to the peer's fastest setup, reported as met or
missed; the best of ours is reported beside it.

Setups: ours with the trainer's divergence guard and fused attention (on the CPU also the reference
attention in bf16), eager and torch.compile'd as the trainer compiles it (forward and loss as one
graph, `tinylm.training.step.TrainingStep`, and the AdamW update as another,
`tinylm.optim.AdamW(compiled=True)`); the peer with its default (sdpa) attention and with its
eager one (the faster on a CPU), and torch.optim.AdamW. Each runs in bf16 autocast on a GPU, and
in both fp32 and bf16 autocast on the CPU; ratios are against the peer's fastest setup. On the CPU
both keep freed memory for reuse, as the trainer does (`tinylm.training.hardware.keep_freed_host_memory`).
The setups are timed in interleaved rounds and the best round of each counts, so load from other
processes on a shared machine hurts all of them alike. Prints a table and writes
benchmarks/results/bench_train.{json,md}. On a GPU it also reports model FLOPs utilisation (MFU)
against that GPU's dense bf16 peak (tinylm.training.hardware.PEAK_FLOPS; "unknown" for a GPU not in it).
"""
from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tinylm.config import ModelConfig, TrainingConfig
from tinylm.files import write_json_atomic, write_text_atomic
from tinylm.nn import (
    build_model,
    forward_flops_per_token,
    model_flops_utilization,
    parameter_count,
    training_flops_per_token,
)
from tinylm.optim import AdamW
from tinylm.pipeline.config import resolve_config
from tinylm.training.divergence import DivergenceGuard
from tinylm.training.hardware import autocast_context, device_name, keep_freed_host_memory, use_compile
from tinylm.training.peak_flops import peak_flops
from tinylm.training.step import TrainingStep

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LR = 1e-3
TARGETS = {"baseline": 1.5, "reference": 1.3}  # the default setup's tokens/s over the peer's fastest (issue 14), CPU


def sizes(config_file: Path) -> dict[str, tuple[ModelConfig, int, int]]:
    """name -> (model, batch size on CPU, batch size on GPU); the baseline as the config file has it."""
    config = resolve_config([config_file])
    baseline = config["baseline"]
    vocab = config["tokenizers"][baseline["tokenizer"]]["vocab_size"]
    shape = {k: v for k, v in baseline["model"].items() if k in ModelConfig.__dataclass_fields__}
    batch = baseline["training"]["batch_size"]
    return {"baseline": (ModelConfig(**{**shape, "vocab_size": vocab}), batch, batch),
            "reference": (ModelConfig(vocab_size=10000, context_length=256, d_model=512, d_ff=1344, num_layers=4,
                                      num_heads=16), 4, 128)}


def default_setup(config_file: Path, device: torch.device) -> str:
    """The label of the setup the config's baseline run trains with on `device`."""
    training = TrainingConfig(**resolve_config([config_file])["baseline"]["training"])
    return setup_label(training.attention, training.precision, use_compile(training.compile, device))


def setup_label(attention: str, precision: str, compiled: bool) -> str:
    return f"tinylm {attention} {precision}" + (" compile" if compiled else "")


def llama_peer(cfg: ModelConfig, device: torch.device, attention: str = "sdpa"):
    """HF Llama of our dimensions, with attention "sdpa" (its default) or "eager"."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.context_length,
                         rms_norm_eps=1e-5, rope_theta=cfg.rope_theta,  # transformers 5 files it under rope_parameters
                         tie_word_embeddings=False, attention_bias=False, mlp_bias=False, use_cache=False,
                         attn_implementation=attention)
    return LlamaForCausalLM(config).to(device)


def copy_weights_into_peer(ours: torch.nn.Module, peer: torch.nn.Module, cfg: ModelConfig) -> None:
    """Llama rotates the halves (x[i], x[i + d/2]) of each head where we rotate adjacent pairs
    (x[2k], x[2k+1]); reordering the q/k rows of each head to evens-then-odds maps one onto the other."""
    d_head = cfg.d_model // cfg.num_heads
    per_head = torch.cat([torch.arange(0, d_head, 2), torch.arange(1, d_head, 2)])
    rows = torch.cat([h * d_head + per_head for h in range(cfg.num_heads)])
    state = ours.state_dict()
    mapped = {"model.embed_tokens.weight": state["token_embeddings.weight"],
              "model.norm.weight": state["ln_final.weight"], "lm_head.weight": state["lm_head.weight"]}
    for i in range(cfg.num_layers):
        ours_prefix, peer_prefix = f"layers.{i}.", f"model.layers.{i}."
        mapped |= {
            peer_prefix + "self_attn.q_proj.weight": state[ours_prefix + "attn.q_proj.weight"][rows],
            peer_prefix + "self_attn.k_proj.weight": state[ours_prefix + "attn.k_proj.weight"][rows],
            peer_prefix + "self_attn.v_proj.weight": state[ours_prefix + "attn.v_proj.weight"],
            peer_prefix + "self_attn.o_proj.weight": state[ours_prefix + "attn.output_proj.weight"],
            peer_prefix + "mlp.gate_proj.weight": state[ours_prefix + "ffn.w1.weight"],
            peer_prefix + "mlp.down_proj.weight": state[ours_prefix + "ffn.w2.weight"],
            peer_prefix + "mlp.up_proj.weight": state[ours_prefix + "ffn.w3.weight"],
            peer_prefix + "input_layernorm.weight": state[ours_prefix + "ln1.weight"],
            peer_prefix + "post_attention_layernorm.weight": state[ours_prefix + "ln2.weight"],
        }
    peer.load_state_dict(mapped, strict=True)


@dataclass
class Setup:
    label: str
    model: torch.nn.Module
    forward: object          # token ids -> logits
    optimizer: torch.optim.Optimizer
    autocast: object         # () -> context manager
    peer: bool = False
    best_s: float = float("inf")
    training_step: TrainingStep | None = None  # ours: the trainer's own step, divergence guard included
    steps: int = field(default=0)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if self.training_step is not None:
            self.steps += 1
            self.training_step(inputs, targets, self.steps)
            return
        with self.autocast():  # the peer's, with PyTorch's loss and clipping
            logits = self.forward(inputs)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def make_setups(cfg: ModelConfig, device: torch.device, try_compile: bool) -> list[Setup]:
    """Ours (eager, and compiled as the trainer compiles it) and the peer, in each precision the device
    trains well in: bf16 autocast on a GPU; fp32 and bf16 autocast on the CPU, where bf16 matmuls pay
    on AVX-512 BF16 / AMX cores and cost time on others."""
    precisions = ["bf16"] if device.type == "cuda" else ["fp32", "bf16"]
    # On the CPU in bf16 both attention paths are matmuls around a softmax, torch's kernel (fused)
    # or the formula (reference; see MultiHeadSelfAttention._attend).
    kernels = [("fused", precision) for precision in precisions]
    if device.type == "cpu":
        kernels.append(("reference", "bf16"))

    def ours(attention, precision, compiled):
        torch.manual_seed(0)
        model = build_model(cfg, attention=attention, device=device)
        autocast = autocast_context(device, precision)
        optimizer = AdamW(model.parameters(), lr=LR, compiled=compiled)
        # A factor no random-batch loss reaches: the guard's cost is timed, it never rejects a step.
        step = TrainingStep(model, optimizer, autocast, 1.0, DivergenceGuard(1e9, device), compiled=compiled)
        return Setup(setup_label(attention, precision, compiled), model, model, optimizer, autocast,
                     training_step=step)

    setups = [ours(attention, precision, compiled) for attention, precision in kernels for compiled in (False, True)
              if try_compile or not compiled]
    for attention in ("sdpa", "eager"):
        peer = llama_peer(cfg, device, attention)
        copy_weights_into_peer(setups[0].model, peer, cfg)
        peer_forward = lambda ids, peer=peer: peer(input_ids=ids).logits  # noqa: E731
        optimizer = torch.optim.AdamW(peer.parameters(), lr=LR)
        setups += [Setup(f"HF Llama {attention} {precision}", peer, peer_forward, optimizer,
                         autocast_context(device, precision), peer=True) for precision in precisions]
    return setups


@torch.no_grad()
def max_logit_difference(setups: list[Setup], inputs: torch.Tensor) -> float:
    """Ours against each peer model in the first precision (fp32 on the CPU), with the same weights."""
    ours = setups[0]
    peers = {id(setup.model): setup for setup in setups if setup.peer}.values()
    with ours.autocast():
        expected = ours.model(inputs).float()
        return max((expected - peer.forward(inputs).float()).abs().max().item() for peer in peers)


def load_average() -> float | None:
    """The 1-minute load average (busy processes), where the OS reports one."""
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_size(name: str, cfg: ModelConfig, batch_size: int, device: torch.device, round_s: float,
               rounds: int, try_compile: bool, default_label: str) -> dict:
    setups = make_setups(cfg, device, try_compile)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (batch_size, cfg.context_length + 1), generator=generator)
    inputs, targets = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
    difference = max_logit_difference(setups, inputs)
    steps = {}
    for setup in setups:  # warm-up: compilation, allocator, first AdamW step
        started = time.perf_counter()
        setup.step(inputs, targets)
        synchronize(device)
        compiled = time.perf_counter()
        setup.step(inputs, targets)
        synchronize(device)
        step_s = time.perf_counter() - compiled
        steps[setup.label] = max(1, math.ceil(round_s / step_s))  # rounds of about round_s seconds
        print(f"  {name}: {setup.label} warm-up {compiled - started:.1f}s, then {step_s:.3f}s/step", flush=True)
    for _ in range(rounds):
        for setup in setups:
            synchronize(device)
            started = time.perf_counter()
            for _ in range(steps[setup.label]):
                setup.step(inputs, targets)
            synchronize(device)
            setup.best_s = min(setup.best_s, (time.perf_counter() - started) / steps[setup.label])
    tokens_per_step = batch_size * cfg.context_length
    peer_rate = tokens_per_step / min(setup.best_s for setup in setups if setup.peer)  # the peer's fastest setup
    peak = peak_flops(device_name(device), "bf16") if device.type == "cuda" else None
    rows = []
    for setup in setups:
        rate = tokens_per_step / setup.best_s
        row = {"setup": setup.label, "step_s": setup.best_s, "tokens_per_s": rate, "vs_peer": rate / peer_rate}
        if device.type == "cuda":
            row["mfu"] = None if peak is None else model_flops_utilization(rate, cfg, peak)
        rows.append(row)
    ours_best = max((row for row, setup in zip(rows, setups) if not setup.peer), key=lambda r: r["tokens_per_s"])
    default = next((row for row in rows if row["setup"] == default_label), None)  # absent under --no-compile on a GPU
    fastest_peer = max((row for row, setup in zip(rows, setups) if setup.peer), key=lambda r: r["tokens_per_s"])
    target = TARGETS.get(name) if device.type == "cpu" else None
    return {"size": name, "model": cfg.__dict__, "batch_size": batch_size, "params": parameter_count(cfg),
            "forward_flops_per_token": forward_flops_per_token(cfg),
            "training_flops_per_token": training_flops_per_token(cfg),
            "max_logit_difference_vs_peer": difference, "rows": rows, "fastest_peer": fastest_peer["setup"],
            "best_ours": ours_best["setup"], "best_ratio": ours_best["vs_peer"],
            "default_setup": default_label, "default_ratio": default and default["vs_peer"], "target_ratio": target}


def markdown(results: list[dict], meta: dict) -> str:
    mfu = meta["device"].startswith("cuda")
    lines = [f"# Training throughput: tinylm vs HF LlamaForCausalLM ({meta['device_name']})", "",
             f"torch {meta['torch']}, transformers {meta['transformers']}, "
             f"{meta['threads']} of {meta['cpus']} CPU threads; "
             f"best of {meta['rounds']} interleaved rounds of ~{meta['round_seconds']} s (at least one step); "
             f"1-minute load average {meta['load_average_before']} before, {meta['load_average_after']} after "
             "(other jobs on a shared machine make CPU timings noisy).", ""]
    for result in results:
        m = result["model"]
        lines += [f"## {result['size']}: vocab {m['vocab_size']}, ctx {m['context_length']}, d_model {m['d_model']}, "
                  f"d_ff {m['d_ff']}, {m['num_layers']} layers, {m['num_heads']} heads; "
                  f"batch {result['batch_size']}", "",
                  f"{result['params']:,} parameters; {result['forward_flops_per_token']:,} forward / "
                  f"{result['training_flops_per_token']:,} training FLOPs per token; "
                  f"max |logits ours - peer| with shared weights: {result['max_logit_difference_vs_peer']:.2e}", "",
                  "| setup | s/step | tokens/s | vs the peer's fastest |" + (" MFU |" if mfu else ""),
                  "|---|---:|---:|---:|" + ("---:|" if mfu else "")]
        for row in result["rows"]:
            shown_mfu = "unknown" if row.get("mfu") is None else f"{row['mfu']:.1%}"
            lines.append(f"| {row['setup']} | {row['step_s']:.4f} | {row['tokens_per_s']:,.0f} | "
                         f"{row['vs_peer']:.2f}x |" + (f" {shown_mfu} |" if mfu else ""))
        summary = f"The peer's fastest: {result['fastest_peer']}. Best of ours: {result['best_ours']}, " \
                  f"{result['best_ratio']:.2f}x."
        if result["default_ratio"] is not None:
            summary += f" The default config's setup, {result['default_setup']}: {result['default_ratio']:.2f}x."
            if result["target_ratio"] is not None:
                gap = result["default_ratio"] / result["target_ratio"] - 1
                verdict = "met." if gap >= 0 else f"missed by {-gap:.0%}."
                summary += f" Target {result['target_ratio']:.2f}x: {verdict}"
        lines += ["", summary, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "config" / "config.yaml"),
                        help="the config whose baseline run is the `baseline` size")
    parser.add_argument("--sizes", nargs="+", choices=["baseline", "reference"], default=["baseline", "reference"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--round-seconds", type=float, default=2.0,
                        help="each timed round runs whole steps for about this long (at least one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="override the per-size batch size")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile setups")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=str(RESULTS / "bench_train"), help="output path without extension")
    args = parser.parse_args()

    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        keep_freed_host_memory()
    meta = {"device": str(device), "device_name": device_name(device), "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "round_seconds": args.round_seconds, "rounds": args.rounds,
            "load_average_before": load_average()}
    results = []
    shapes = sizes(Path(args.config))
    default_label = default_setup(Path(args.config), device)
    for name in args.sizes:
        cfg, cpu_batch, gpu_batch = shapes[name]
        batch_size = args.batch_size or (gpu_batch if device.type == "cuda" else cpu_batch)
        print(f"{name}: {parameter_count(cfg):,} parameters, {training_flops_per_token(cfg):,} training "
              f"FLOPs/token, batch {batch_size}", flush=True)
        results.append(bench_size(name, cfg, batch_size, device, args.round_seconds, args.rounds, args.compile,
                                  default_label))
    meta["load_average_after"] = load_average()
    text = markdown(results, meta)
    print(text)
    write_json_atomic(args.out + ".json", {"meta": meta, "results": results})
    write_text_atomic(args.out + ".md", text)


if __name__ == "__main__":
    main()
