"""`tinylm evaluate`: loss and perplexity of a trained model on a token array.

    tinylm evaluate --checkpoint results/runs/RUN/model.pt --tokens valid.npy --out eval.json

Every token after the first is predicted once, from up to `context_length` tokens before it
(consecutive non-overlapping windows), so the loss is the per-token mean over the array.
"""
from __future__ import annotations

import argparse
import math

from tinylm.checkpoint import load_model
from tinylm.data.tokens import check_token_ids, load_tokens, loss_sum_over_windows, sequential_windows
from tinylm.files import write_json_atomic
from tinylm.nn.functional import cross_entropy
from tinylm.training.hardware import autocast_context, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model.pt (or a resumable checkpoint.pt)")
    parser.add_argument("--tokens", required=True, help=".npy token array")
    parser.add_argument("--out", required=True, help="JSON result file")
    parser.add_argument("--max-tokens", type=int, default=None, help="predict at most this many tokens")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")


def evaluate_model(checkpoint: str, tokens_path: str, max_tokens: int | None = None, batch_size: int = 32,
                   device_name: str = "auto") -> dict:
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"--max-tokens must be positive, got {max_tokens}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {batch_size}")
    device = resolve_device(device_name)
    model, config = load_model(checkpoint, device)
    tokens = load_tokens(tokens_path, min_tokens=2, needed_for="one to predict from, one to predict")
    check_token_ids(tokens, config.model.vocab_size, f"--tokens: {tokens_path!r}", "the model's vocab_size")
    windows = sequential_windows(len(tokens), config.model.context_length, max_tokens)
    total, count = loss_sum_over_windows(model, tokens, windows, batch_size, config.model.context_length, device,
                                         cross_entropy, autocast_context(device, config.training.precision))
    loss = total / count
    return {"checkpoint": checkpoint, "tokens_path": tokens_path, "run": config.name, "tokens": count,
            "loss": loss, "perplexity": math.exp(loss) if loss < 700 else None, "device": str(device)}


def run(args: argparse.Namespace) -> int:
    result = evaluate_model(args.checkpoint, args.tokens, args.max_tokens, args.batch_size, args.device)
    write_json_atomic(args.out, result)
    print(f"{result['run']}: loss {result['loss']:.4f}, perplexity {result['perplexity']}, "
          f"{result['tokens']} tokens")
    return 0
