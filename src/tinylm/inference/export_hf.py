"""Export a trained run as a Hugging Face `transformers` model folder (LlamaForCausalLM).

    tinylm export-hf --run-dir results/runs/A results/runs/B --out results/export/tinystories

Of the given run directories, the one `tinylm generate` would pick is exported: the one that did not
diverge and has the lowest final validation loss (summary.json).

The folder loads offline with `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)`: config.json, generation_config.json, model.safetensors,
tokenizer.json and tokenizer_config.json. Our default architecture (pre-norm RMSNorm, RoPE, SwiGLU,
untied head, no biases) is exactly Llama's, except for two layouts:
- our RoPE rotates adjacent pairs (x[2k], x[2k+1]) of each head, Llama rotates halves
  (x[k], x[k + d_head/2]) by the same angle. Reordering the rows of the q and k projections of each
  head from (pair, member) to (member, pair) turns one into the other; q.k is unchanged because q
  and k are permuted alike, and v needs nothing.
- SwiGLU's w1, w3, w2 are Llama's gate_proj, up_proj, down_proj.
RMSNorm is the same formula (x / sqrt(mean(x^2) + eps) * gain, in float32), with our eps.
Variants Llama has no setting for (post-norm, no norm, NoPE, the ungated SiLU MLP) are refused.

Within the context length, transformers computes what we do (greedy text included). Past it,
`tinylm generate` slides the window while transformers keeps every token at positions the model
never trained on; generation_config.json therefore stops `generate` at the context length.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import torch

from tinylm.files import atomic_path, write_json_atomic
from tinylm.inference.generate import END_OF_TEXT, choose_run

# What LlamaForCausalLM can express, per ModelConfig field.
LLAMA_VARIANT = {"norm": "pre", "position": "rope", "ffn": "swiglu"}

# Our keys after `layers.N.` -> Llama's after `model.layers.N.`; then the keys outside the layers.
_LAYER_KEYS = {
    "ln1.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.output_proj.weight": "self_attn.o_proj.weight",
    "ln2.weight": "post_attention_layernorm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
_TOP_KEYS = {
    "token_embeddings.weight": "model.embed_tokens.weight",
    "ln_final.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LAYER_KEY = re.compile(r"layers\.(\d+)\.(.+)")
_ROTATED = ("attn.q_proj.weight", "attn.k_proj.weight")


def check_exportable(model_config, run: str) -> None:
    """Refuse, in one line naming the run and the setting, a variant LlamaForCausalLM cannot express."""
    for name, needed in LLAMA_VARIANT.items():
        value = getattr(model_config, name)
        if value != needed:
            raise ValueError(f"{run}: model.{name}={value!r} cannot be exported to LlamaForCausalLM "
                             f"(it needs model.{name}={needed!r})")


def pairs_to_halves(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rows of a q/k projection reordered per head from adjacent RoPE pairs to Llama's halves.

    Row 2k + m of a head (pair k, member m) moves to row m * d_head/2 + k.
    """
    out_features, in_features = weight.shape
    d_head = out_features // num_heads
    return (weight.reshape(num_heads, d_head // 2, 2, in_features).transpose(1, 2)
            .reshape(out_features, in_features).contiguous())


def llama_state_dict(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """Our TransformerLM state dict renamed (and q/k permuted) for LlamaForCausalLM."""
    converted = {}
    for key, tensor in state.items():
        layer = _LAYER_KEY.fullmatch(key)
        if key in _TOP_KEYS:
            converted[_TOP_KEYS[key]] = tensor.contiguous()
        elif layer and layer[2] in _LAYER_KEYS:
            if layer[2] in _ROTATED:
                tensor = pairs_to_halves(tensor, num_heads)
            converted[f"model.layers.{layer[1]}.{_LAYER_KEYS[layer[2]]}"] = tensor.contiguous()
        else:
            raise ValueError(f"parameter {key!r} has no counterpart in LlamaForCausalLM")
    return converted


def rms_norm_eps(model: torch.nn.Module, run: str) -> float:
    """The epsilon of the model's RMSNorms (Llama has one for all of them)."""
    from tinylm.nn import RMSNorm

    values = {module.eps for module in model.modules() if isinstance(module, RMSNorm)}
    if len(values) != 1:
        raise ValueError(f"{run}: the RMSNorms use epsilons {sorted(values)}; Llama needs a single one")
    return values.pop()


def hf_tokenizer(tokenizer):
    """Our byte-level BPE as a `tokenizers` Tokenizer (tokenizer.json) giving the same ids.

    The GPT-2 byte alphabet, pattern and merge order are what the ByteLevel pre-tokenizer and the
    BPE model use; special tokens are cut out before pre-tokenization, as ours are. No prefix space
    and no BOS are added.
    """
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as BackendTokenizer

    from tinylm.tokenizer.tokenizer import token_to_text

    vocab: dict[str, int] = {}
    for token_id in sorted(tokenizer.vocab):
        text = token_to_text(tokenizer.vocab[token_id])
        if text in vocab:
            raise ValueError(f"tokenizer ids {vocab[text]} and {token_id} hold the same bytes; "
                             "tokenizer.json cannot store both")
        vocab[text] = token_id
    merges = [(token_to_text(a), token_to_text(b)) for a, b in tokenizer.merges]
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                for token in tokenizer.special_tokens])
    return backend


def tokenizer_config(eot: str | None, context_length: int) -> dict:
    """tokenizer_config.json: the generic fast tokenizer (known to transformers 4.x and 5.x alike,
    unlike the class name 5.x writes), decoding that leaves spaces as `Tokenizer.decode` does, and
    no token_type_ids (4.x would make them, and `generate` refuses them for Llama)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eot, "eos_token": eot,
            "model_max_length": context_length, "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"]}


def export(run_dirs: list[str], out: str | os.PathLike) -> str:
    """Write the transformers folder of the best of `run_dirs` into `out` (created; our files there
    are replaced); returns the run directory exported."""
    import safetensors.torch

    from tinylm.checkpoint import load_model, model_state_dict
    from tinylm.tokenizer import Tokenizer

    run_dir, _, _ = choose_run(run_dirs)
    out = Path(out)
    model, config = load_model(Path(run_dir) / "model.pt", "cpu")
    run = f"run {run_dir!r}"
    check_exportable(config.model, run)
    if not config.data.tokenizer_dir:
        raise ValueError(f"{run}: the run config has no data.tokenizer_dir to export")
    tokenizer = Tokenizer.from_dir(config.data.tokenizer_dir)
    m = config.model
    if len(tokenizer) > m.vocab_size:
        raise ValueError(f"{run}: tokenizer {config.data.tokenizer_dir!r} has {len(tokenizer)} ids, "
                         f"more than model.vocab_size={m.vocab_size}")
    eot = END_OF_TEXT if END_OF_TEXT in tokenizer.special_ids else None
    eot_id = tokenizer.special_ids.get(END_OF_TEXT)

    # Written as plain JSON, not through LlamaConfig, so the file does not depend on the installed
    # transformers: 4.x reads rope_theta and torch_dtype, 5.x reads rope_parameters and dtype.
    llama = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "intermediate_size": m.d_ff,
        "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_heads, "head_dim": m.d_model // m.num_heads,
        "max_position_embeddings": m.context_length, "rms_norm_eps": rms_norm_eps(model, run),
        "rope_theta": m.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
        "bos_token_id": eot_id, "eos_token_id": eot_id, "torch_dtype": "float32", "dtype": "float32",
    }
    generation = {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id,
                  "max_length": m.context_length}
    weights = llama_state_dict({k: v.float() for k, v in model_state_dict(model).items()}, m.num_heads)

    # Each file appears under its name only once complete, so an interrupted export leaves none half-written.
    write_json_atomic(out / "config.json", llama)
    write_json_atomic(out / "generation_config.json", generation)
    with atomic_path(out / "model.safetensors") as tmp:  # save_file would make it owner-only (0600)
        tmp.write_bytes(safetensors.torch.save(weights, metadata={"format": "pt"}))
    with atomic_path(out / "tokenizer.json") as tmp:
        hf_tokenizer(tokenizer).save(str(tmp))
    write_json_atomic(out / "tokenizer_config.json", tokenizer_config(eot, m.context_length))
    return run_dir


# ---- command line ----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", nargs="+", required=True,
                        help="finished run directories (summary.json, model.pt; the config names the "
                             "tokenizer); the best non-diverged one is exported")
    parser.add_argument("--out", required=True, help="folder to write the transformers model into")


def run(args: argparse.Namespace) -> int:
    run_dir = export(args.run_dir, args.out)
    print(f"exported {run_dir} as LlamaForCausalLM to {args.out}")
    return 0
