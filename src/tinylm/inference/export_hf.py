"""Export a trained run as a Hugging Face `transformers` model folder (LlamaForCausalLM).

    tinylm export-hf --run-dir results/runs/A results/runs/B --out results/export/tinystories

Of the given run directories, the one `tinylm generate` would pick is exported: the one that did not
diverge and has the lowest final validation loss (summary.json).

The folder loads offline with `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)`: config.json, generation_config.json, model.safetensors,
tokenizer.json and tokenizer_config.json, with a model card (README.md: the Hugging Face metadata
header, then the source run, its results, data, provenance and config) and tinylm-export.json.

Where it came from: the card shows, and model.safetensors' metadata carries as JSON strings
(`tinylm.run`, `tinylm.config`, `tinylm.provenance`), the run (name, folder, status, steps, tokens,
final losses), its config as trained (model.pt's) and the provenance its summary.json recorded (git
commit, lock, versions, device, and the host and command too: read the card before publishing it).

Which folders it writes into: a new or empty one, or an earlier export, recognised by the
tinylm-export.json it holds (written before anything else, so an interrupted export is recognised
too); our files there are replaced, any others left alone. Anything else is refused, naming the
folder, unless --force (then our files replace theirs).

Our default architecture (pre-norm RMSNorm, RoPE, SwiGLU, untied head, no biases) is exactly
Llama's, except for two layouts:
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
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml

import tinylm
from tinylm.config import RunConfig
from tinylm.files import atomic_path, check_folder, write_json_atomic, write_text_atomic
from tinylm.inference.generate import END_OF_TEXT, choose_run
from tinylm.training.summary import SUMMARY, Summary

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

# What an export writes; MARKER's presence is how a folder is recognised as an earlier export.
MARKER = "tinylm-export.json"
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "README.md")
CARD_TAGS = ["tinylm", "llama", "text-generation", "from-scratch"]


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


# ---- the output folder, and where the export came from --------------------------------------

def check_out_folder(out: Path, force: bool = False) -> None:
    """Refuse, in one line naming the folder, one that holds files but not an earlier export (unless
    `force`): they may be someone's own, and config.json or README.md would be replaced."""
    check_folder(out, "--out")
    if force or not out.is_dir() or (out / MARKER).is_file():
        return
    found = sorted(entry.name for entry in out.iterdir())
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise FileExistsError(f"--out {str(out)!r} holds files that are not a tinylm export ({shown}); "
                              "name a new or empty folder, or pass --force to write over them")


def source_record(run_dir: str, config: RunConfig, summary: Summary) -> dict[str, dict[str, Any]]:
    """What an export came from: the run and its results, its config and its provenance. The model
    card shows it and the weights carry it, so that the two cannot disagree."""
    fields = (SUMMARY.name, SUMMARY.status, SUMMARY.steps, SUMMARY.tokens, SUMMARY.params, SUMMARY.final_train_loss,
              SUMMARY.final_val_loss, SUMMARY.final_val_tokens, SUMMARY.best_val_loss)
    run = {"run_dir": str(run_dir), **{name: getattr(summary, name) for name in fields}}
    return {"run": run, "config": config.to_dict(), "provenance": dataclasses.asdict(summary.provenance)}


def safetensors_metadata(record: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The record as safetensors metadata, whose values must be strings (so JSON), beside the
    "format" transformers checks."""
    return {"format": "pt", **{f"tinylm.{part}": json.dumps(value, sort_keys=True) for part, value in record.items()}}


def _cell(value: Any) -> str:
    """A markdown table cell: unknown values say so, and a `|` does not end the cell."""
    return "n/a" if value is None else str(value).replace("|", "\\|")


def _loss(value: float | None) -> str:
    return "n/a (not finite)" if value is None else f"{value:.4f} nats/token"


def _table(rows: list[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {name} | {_cell(value)} |" for name, value in rows)])


def model_card(record: dict[str, dict[str, Any]], context_length: int) -> str:
    """README.md: the Hub's metadata header (YAML between `---` lines), then the record for people."""
    run, config, prov = record["run"], record["config"], record["provenance"]
    header = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": CARD_TAGS,
              "model_name": run[SUMMARY.name]}
    dirty = {True: " (with uncommitted changes)", False: "", None: ""}[prov["git_dirty"]]
    commit = None if prov["git_commit"] is None else f"`{prov['git_commit']}`{dirty}"
    data = config["data"]
    sections = [
        f"---\n{yaml.safe_dump(header, sort_keys=False)}---",
        f"# {run[SUMMARY.name]}",
        f"A Transformer language model of {run[SUMMARY.params]:,} parameters, trained from scratch with tinylm and "
        "exported by `tinylm export-hf` as a Hugging Face `LlamaForCausalLM`, with its byte-level BPE tokenizer.",
        "## Source run",
        _table([("run", f"`{run[SUMMARY.name]}` (`{run['run_dir']}`)"),
                ("status", f"{run[SUMMARY.status]} after {run[SUMMARY.steps]:,} steps "
                           f"({run[SUMMARY.tokens]:,} training tokens)"),
                ("final training loss", _loss(run[SUMMARY.final_train_loss])),
                ("final validation loss",
                 f"{_loss(run[SUMMARY.final_val_loss])}, on {run[SUMMARY.final_val_tokens]:,} tokens"),
                ("best validation loss", _loss(run[SUMMARY.best_val_loss]))]),
        "## Data",
        _table([("training tokens", f"`{data['train_tokens']}`"), ("validation tokens", f"`{data['valid_tokens']}`"),
                ("tokenizer", f"`{data['tokenizer_dir']}`")]),
        "## Provenance",
        _table([("git commit", commit), ("lock", prov["lock"]), ("tinylm", prov["tinylm_version"]),
                ("PyTorch", prov["torch_version"]), ("Python", prov["python_version"]),
                ("device", prov["device_name"]), ("CUDA", prov["cuda_version"]), ("host", prov["hostname"]),
                ("platform", prov["platform"]), ("started", prov["started_at"]),
                ("command", f"`{prov['command']}`")]),
        "## Config",
        f"The run config, as `tinylm train --config` reads it:\n\n```json\n{json.dumps(config, indent=2)}\n```",
        "## Use",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n```\n\n'
        f"`generate` stops at the context length, {context_length} tokens, which the model never trained past.",
        "## Files",
        "model.safetensors carries the record above in its metadata (`tinylm.run`, `tinylm.config`, "
        f"`tinylm.provenance`, as JSON). {MARKER} marks this folder as a tinylm export: a later "
        "`tinylm export-hf --out` naming it replaces these files.",
    ]
    return "\n\n".join(sections) + "\n"


# ---- the export ------------------------------------------------------------------------------

def export(run_dirs: list[str], out: str | os.PathLike, force: bool = False) -> str:
    """Write the transformers folder of the best of `run_dirs` into `out` (a new or empty folder, an
    earlier export, or with `force` any folder); returns the run directory exported."""
    import safetensors.torch

    from tinylm.checkpoint import load_model, model_state_dict
    from tinylm.tokenizer import Tokenizer

    out = Path(out)
    check_out_folder(out, force)
    run_dir, summary, _ = choose_run(run_dirs)
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
    record = source_record(run_dir, config, summary)

    # The marker first, so that an export interrupted after it is still recognised as ours; each
    # file appears under its name only once complete, so an interrupted export leaves none half-written.
    write_json_atomic(out / MARKER, {"exported_by": "tinylm export-hf", "tinylm_version": tinylm.__version__,
                                     "run_dir": str(run_dir), "files": list(EXPORT_FILES)})
    write_json_atomic(out / "config.json", llama)
    write_json_atomic(out / "generation_config.json", generation)
    with atomic_path(out / "model.safetensors") as tmp:  # save_file would make it owner-only (0600)
        tmp.write_bytes(safetensors.torch.save(weights, metadata=safetensors_metadata(record)))
    with atomic_path(out / "tokenizer.json") as tmp:
        hf_tokenizer(tokenizer).save(str(tmp))
    write_json_atomic(out / "tokenizer_config.json", tokenizer_config(eot, m.context_length))
    write_text_atomic(out / "README.md", model_card(record, m.context_length))
    return run_dir


# ---- command line ----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", nargs="+", required=True,
                        help="finished run directories (summary.json, model.pt; the config names the "
                             "tokenizer); the best non-diverged one is exported")
    parser.add_argument("--out", required=True,
                        help="folder to write the transformers model into: new, empty, or an earlier export")
    parser.add_argument("--force", action="store_true",
                        help="write into --out even if it holds other files (ours replace those of the same name)")


def run(args: argparse.Namespace) -> int:
    run_dir = export(args.run_dir, args.out, args.force)
    print(f"exported {run_dir} as LlamaForCausalLM to {args.out}")
    return 0
