"""A small resolved pipeline config for the plan and report-kind tests: two corpora and tokenizers
and the two placed experiments, with room for more."""
from __future__ import annotations

from tinylm.pipeline.config import validate_config


def small_config(**experiments) -> dict:
    """A resolved config with two corpora and tokenizers and the given experiments (plus the two required)."""
    data = {
        "corpora": {c: {s: {"source": f"/data/{c}/{s}.txt"} for s in ("train", "valid")} for c in ("ts", "web")},
        "tokenizers": {"ts": {"corpus": "ts", "vocab_size": 300}, "web": {"corpus": "web", "vocab_size": 400}},
        "baseline": {"tokenizer": "ts", "corpus": "ts",
                     "model": {"context_length": 16, "d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32},
                     "optimizer": {"lr": 3e-3, "warmup_steps": 4},
                     "training": {"batch_size": 8, "max_steps": 100, "eval_interval": 10, "log_interval": 5,
                                  "checkpoint_interval": 50}},
        "experiments": {"lr_sweep": {"sweep": {"optimizer.lr": [1e-2, 3e-3]}, "compare_baseline": False},
                        "batch_size": {"batch_sizes": [2, 8, 32], "max_tokens": 12800, "max_batch": 64,
                                       "max_lr": 1e-2},
                        **experiments},
    }
    return validate_config(data)
