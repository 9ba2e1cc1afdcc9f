"""Text generation: temperature and nucleus (top-p) sampling with a key/value cache.

    tinylm generate --run-dir results/runs/A results/runs/B --prompt "Once upon a time" \
        --temperature 0.8 --top-p 0.95 --max-new-tokens 256 --seeds 0 1 2 --out samples.json

Of the given run directories, the one that did not diverge and has the lowest final validation
loss (summary.json) is used. `--temperature` and `--top-p` take several values to sample a grid of
settings for the report (every temperature x top-p x seed); temperature 0 is greedy decoding.

With the cache, each new token costs a forward pass over one position. Once prompt and output
fill the context window, the window slides: the model sees the last `context_length` tokens,
recomputed from scratch each step, exactly as the uncached path does.
"""
from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import dataclass

import torch

from tinylm.files import write_json_atomic
from tinylm.nn.functional import softmax
from tinylm.training.outputs import RunFolder
from tinylm.training.summary import Summary, best_run

END_OF_TEXT = "<|endoftext|>"


def sample_next_token(logits: torch.Tensor, temperature: float, top_p: float,
                      generator: torch.Generator | None = None) -> int:
    """One token id from logits (vocab,): argmax at temperature 0, else softmax(logits / T) cut to
    the smallest set of most likely tokens whose probability reaches top_p."""
    if temperature == 0:
        return int(logits.argmax())
    probs = softmax(logits.double() / temperature, dim=-1)
    if top_p >= 1:
        return int(torch.multinomial(probs, 1, generator=generator))
    sorted_probs, order = probs.sort(descending=True)
    mass_before = sorted_probs.cumsum(0) - sorted_probs   # probability of the tokens ranked higher
    sorted_probs = sorted_probs * (mass_before < top_p)   # the most likely token always stays
    choice = torch.multinomial(sorted_probs, 1, generator=generator)  # renormalises by itself
    return int(order[choice])


@dataclass
class Generation:
    token_ids: list[int]    # new tokens, without the end-of-text token
    stopped_at_eot: bool


@torch.no_grad()
def generate(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, eot_id: int | None = None, seed: int = 0,
             use_cache: bool = True) -> Generation:
    """Continue `prompt_ids` by up to `max_new_tokens` tokens, stopping at `eot_id`.

    Sampling draws from a CPU generator seeded with `seed`, so a seed gives the same text on any
    device (up to the model's own numerics).
    """
    if not prompt_ids:
        raise ValueError("the prompt encodes to no tokens")
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    window = model.context_length
    tokens = list(prompt_ids)
    new: list[int] = []
    cache = None
    for _ in range(max_new_tokens):
        if use_cache and cache is not None and cache[0].length < window:
            inputs, kv_cache = tokens[-1:], cache   # the cache holds every token but the last
        else:
            inputs = tokens[-window:]
            # A cache filled to the window could not take the next token: a full window goes uncached.
            kv_cache = cache = model.new_kv_cache() if use_cache and len(inputs) < window else None
        logits = model(torch.tensor([inputs], device=device), kv_cache=kv_cache)[0, -1]  # (vocab,)
        token = sample_next_token(logits.float().cpu(), temperature, top_p, generator)
        if token == eot_id:
            return Generation(new, stopped_at_eot=True)
        tokens.append(token)
        new.append(token)
    return Generation(new, stopped_at_eot=False)


# ---- choosing the run ------------------------------------------------------------------------

def choose_run(run_dirs: list[str]) -> tuple[str, Summary, list[dict]]:
    """The run `best_run` picks (not diverged, lowest final validation loss): (dir, its summary, every
    candidate with whether it could be picked)."""
    summaries = {str(run_dir): Summary.read(RunFolder(run_dir).summary, hint="not a finished run")
                 for run_dir in run_dirs}
    best = best_run(summaries, summaries.__getitem__)
    if best is None:
        raise ValueError(f"--run-dir: none of {', '.join(map(str, run_dirs))} has a final validation loss "
                         "(all diverged or unfinished)")
    listing = [{"run_dir": run_dir, "name": s.name, "status": s.status, "final_val_loss": s.final_val_loss,
                "usable": best_run([run_dir], summaries.__getitem__) is not None} for run_dir, s in summaries.items()]
    return best, summaries[best], listing


# ---- command line ----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", nargs="+", required=True,
                        help="run directories (summary.json, model.pt); the best non-diverged one is used")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--temperature", "--temperatures", dest="temperatures", type=float, nargs="+",
                        default=[0.8], help="one or more temperatures; 0 = greedy (default 0.8)")
    parser.add_argument("--top-p", "--top-ps", dest="top_ps", type=float, nargs="+", default=[0.95],
                        help="one or more nucleus thresholds in (0, 1]; 1 = no cut (default 0.95)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one sample per seed and setting")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--no-kv-cache", dest="kv_cache", action="store_false",
                        help="recompute the whole prefix for every token (slow; for checking the cache)")
    parser.add_argument("--out", required=True, help="JSON file of the samples")


def check_settings(args: argparse.Namespace) -> None:
    for t in args.temperatures:
        if not (t >= 0 and math.isfinite(t)):
            raise ValueError(f"--temperature: must be a finite number >= 0, got {t}")
    for p in args.top_ps:
        if not 0 < p <= 1:
            raise ValueError(f"--top-p: must be in (0, 1], got {p}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: must be positive, got {args.max_new_tokens}")


def run(args: argparse.Namespace) -> int:
    from tinylm.checkpoint import load_model
    from tinylm.tokenizer import Tokenizer
    from tinylm.training.hardware import resolve_device

    check_settings(args)
    run_dir, summary, candidates = choose_run(args.run_dir)
    device = resolve_device(args.device)
    model, config = load_model(RunFolder(run_dir).model, device)
    if not config.data.tokenizer_dir:
        raise ValueError(f"{run_dir}: the run config has no data.tokenizer_dir to decode with")
    tokenizer = Tokenizer.from_dir(config.data.tokenizer_dir)
    eot_id = tokenizer.encode(END_OF_TEXT)[0] if END_OF_TEXT in tokenizer.special_tokens else None
    prompt_ids = tokenizer.encode(args.prompt)

    samples = []
    for temperature, top_p, seed in itertools.product(args.temperatures, args.top_ps, args.seeds):
        result = generate(model, prompt_ids, args.max_new_tokens, temperature, top_p, eot_id, seed,
                          use_cache=args.kv_cache)
        completion = tokenizer.decode(result.token_ids)
        samples.append({"temperature": temperature, "top_p": top_p, "seed": seed,
                        "text": tokenizer.decode(prompt_ids + result.token_ids), "completion": completion,
                        "num_new_tokens": len(result.token_ids), "stopped_at_eot": result.stopped_at_eot})
        print(f"[T={temperature} p={top_p} seed={seed}] {args.prompt}{completion}\n")

    write_json_atomic(args.out, {
        "prompt": args.prompt,
        "prompt_tokens": len(prompt_ids),
        "run": {"run_dir": run_dir, "name": summary.name, "status": summary.status,
                "final_val_loss": summary.final_val_loss},
        "candidates": candidates,
        "settings": {"temperatures": args.temperatures, "top_ps": args.top_ps, "seeds": args.seeds,
                     "max_new_tokens": args.max_new_tokens, "kv_cache": args.kv_cache,
                     "eot_token": END_OF_TEXT if eot_id is not None else None, "device": str(device)},
        "samples": samples,
    })
    return 0
