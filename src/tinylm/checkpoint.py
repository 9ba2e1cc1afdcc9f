"""Checkpoints: plain (model + optimizer + iteration), resumable training state, final models.

Everything is saved as tensors and plain Python values, so every file loads with
`torch.load(weights_only=True)`, and written atomically (temporary name, then rename). State-dict
keys are always those of the bare model (`layers.0.attn.q_proj.weight`, ...), whether it was
wrapped by `torch.compile` (`_orig_mod.`) or DistributedDataParallel (`module.`) when saved.
"""
from __future__ import annotations

import os
import random
from typing import IO, Any, cast

import numpy as np
import torch

from tinylm.config import RunConfig
from tinylm.files import atomic_path, first_line, load_torch
from tinylm.training.progress import Progress

WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside torch.compile / DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = cast(torch.nn.Module, model._orig_mod)  # torch.compile's wrapper; typed as Tensor | Module
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes from state-dict keys (e.g. `module._orig_mod.ln_final.weight`)."""
    cleaned = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    return cleaned


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return clean_state_dict(unwrap_model(model).state_dict())


def _save(payload: dict[str, Any], out: str | os.PathLike | IO[bytes]) -> None:
    if isinstance(out, (str, os.PathLike)):
        with atomic_path(out) as tmp:
            torch.save(payload, tmp)
    else:
        torch.save(payload, out)


def _load(src: str | os.PathLike | IO[bytes], map_location: Any = "cpu", required: tuple[str, ...] = (),
          kind: str = "") -> dict[str, Any]:
    """The checkpoint's dict; one without the `required` keys is not a `kind` checkpoint."""
    state = load_torch(src, "checkpoint", map_location)
    missing = set(required) - set(state)
    if missing:
        raise ValueError(f"checkpoint {_source(src)} is not a {kind} checkpoint "
                         f"(missing {', '.join(sorted(missing))})")
    return state


def _source(src: str | os.PathLike | IO[bytes]) -> str:
    return repr(os.fspath(src)) if isinstance(src, (str, os.PathLike)) else "'<stream>'"


def load_weights(model: torch.nn.Module, weights: Any, src: str | os.PathLike | IO[bytes]) -> None:
    """`model.load_state_dict(weights)` of checkpoint `src`, a mismatch named in one line (the first
    tensor, both shapes) instead of torch's listing of every tensor."""
    source = _source(src)
    if not isinstance(weights, dict):
        raise ValueError(f"checkpoint {source}: its weights are a {type(weights).__name__}, not a state dict")
    weights = clean_state_dict(weights)
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in weights:
            raise ValueError(f"checkpoint {source}: its weights lack the model's {key}")
        value = weights[key]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
            found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"checkpoint {source}: its weights do not fit the model: {key} is {found} in "
                             f"the file, {tuple(tensor.shape)} in the model")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise ValueError(f"checkpoint {source}: its weights hold {extra[0]}, which the model does not have")
    model.load_state_dict(weights)


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                    out: str | os.PathLike | IO[bytes]) -> None:
    """Model and optimizer state plus the iteration number, to a path (atomically) or a file object."""
    _save({"model": model_state_dict(model), "optimizer": optimizer.state_dict(),
           "iteration": int(iteration)}, out)


def load_checkpoint(src: str | os.PathLike | IO[bytes], model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> int:
    """Restore model and optimizer from `save_checkpoint` output; returns the iteration."""
    state = _load(src, required=("model", "optimizer", "iteration"), kind="training")
    load_weights(unwrap_model(model), state["model"], src)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"checkpoint {_source(src)}: its optimizer state does not fit this optimizer "
                         f"({first_line(error)})") from None
    return int(state["iteration"])


# ---- random number generators ---------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """torch / numpy / Python RNG states as tensors and plain values (weights_only-loadable)."""
    # legacy=True, the default, gives the tuple; numpy's stubs allow a dict too
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = cast(tuple[str, np.ndarray, int, int, float],
                                                            np.random.get_state())
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---- resumable training state ---------------------------------------------------------------

def save_training_state(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        config: RunConfig, progress: Progress) -> None:
    """Everything a run needs to continue exactly: weights, optimizer, RNGs, config, progress.

    `progress` is stored as a plain dict (numbers, strings, lists and None only).
    """
    _save({"model": model_state_dict(model), "optimizer": optimizer.state_dict(),
           "iteration": int(progress.step), "config": config.to_dict(), "rng": rng_state(),
           "progress": progress.to_dict()}, path)


def load_training_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The dict written by `save_training_state`, its "progress" as a `Progress` record
    (restore RNGs with `set_rng_state(state["rng"])`)."""
    state = _load(path, map_location, required=("model", "optimizer", "config", "rng", "progress"),
                  kind="resumable training")
    state["progress"] = Progress.from_dict(state["progress"], path)
    return state


# ---- final models ---------------------------------------------------------------------------

def save_model(path: str | os.PathLike, model: torch.nn.Module, config: RunConfig) -> None:
    """Weights plus the run config: all `load_model` needs to rebuild the model."""
    _save({"model": model_state_dict(model), "config": config.to_dict()}, path)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """Rebuild the model of a `model.pt` (or a resumable checkpoint) in eval mode on `device`."""
    from tinylm.nn import build_model  # the model code is only needed once a model is loaded

    state = _load(path, map_location=device)
    if "config" not in state:
        raise ValueError(f"checkpoint {os.fspath(path)!r} holds no run config; "
                         "use load_checkpoint with a model you build yourself")
    try:
        config = RunConfig.from_dict(state["config"])
    except ValueError as error:
        raise ValueError(f"checkpoint {os.fspath(path)!r}: its run config is invalid: {error}") from None
    model = build_model(config.model, attention=config.training.attention, device=device)
    load_weights(model, state.get("model"), path)
    return model.eval(), config
