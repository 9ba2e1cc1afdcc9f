"""tinylm.checkpoint: round trips, wrapper prefixes, RNG states, weights_only loading."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from tinylm.checkpoint import (
    clean_state_dict,
    load_checkpoint,
    load_model,
    load_training_state,
    rng_state,
    save_checkpoint,
    save_model,
    save_training_state,
    set_rng_state,
)
from tinylm.config import ModelConfig, RunConfig
from tinylm.nn import build_model
from tinylm.optim import AdamW
from tinylm.training.progress import Progress

MODEL = ModelConfig(vocab_size=50, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64)


def trained_model_and_optimizer(seed: int = 0):
    """A tiny model after two AdamW steps, so the optimizer holds moments and step counts."""
    torch.manual_seed(seed)
    model = build_model(MODEL)
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        tokens = torch.randint(50, (2, 17))
        logits = model(tokens[:, :-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, 50), tokens[:, 1:].reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_optimizer_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    assert state_a["state"].keys() == state_b["state"].keys()
    for index, values in state_a["state"].items():
        for name, value in values.items():
            other = state_b["state"][index][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), (index, name)


@pytest.mark.parametrize("target", ["path", "file object"])
def test_checkpoint_round_trip_restores_model_optimizer_and_iteration(tmp_path, target):
    model, optimizer = trained_model_and_optimizer(seed=0)
    out = tmp_path / "ckpt.pt" if target == "path" else io.BytesIO()
    save_checkpoint(model, optimizer, 123, out)
    if target == "file object":
        out.seek(0)

    fresh_model, _ = trained_model_and_optimizer(seed=1)  # different weights and moments
    fresh_optimizer = AdamW(fresh_model.parameters(), lr=5.0)
    assert load_checkpoint(out, fresh_model, fresh_optimizer) == 123
    assert_same_state(model.state_dict(), fresh_model.state_dict())
    assert_same_optimizer_state(optimizer, fresh_optimizer)


def test_checkpoint_loads_with_weights_only_and_has_api_keys(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    save_checkpoint(model, optimizer, 7, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["iteration"] == 7
    assert {"token_embeddings.weight", "layers.0.attn.q_proj.weight", "layers.1.ffn.w3.weight",
            "ln_final.weight", "lm_head.weight"} <= set(state["model"])


def test_compiled_model_is_saved_with_bare_keys(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    compiled = torch.compile(model)  # compilation is lazy: wrapping alone costs nothing
    assert any(key.startswith("_orig_mod.") for key in compiled.state_dict())
    save_checkpoint(compiled, optimizer, 1, tmp_path / "c.pt")
    assert_same_state(torch.load(tmp_path / "c.pt", weights_only=True)["model"], model.state_dict())

    # Loading also works into a wrapped model, and from a file that kept the prefixes.
    fresh = build_model(MODEL)
    fresh_optimizer = AdamW(fresh.parameters())
    load_checkpoint(tmp_path / "c.pt", torch.compile(fresh), fresh_optimizer)
    assert_same_state(fresh.state_dict(), model.state_dict())


def test_clean_state_dict_strips_ddp_and_compile_prefixes():
    value = torch.ones(1)
    cleaned = clean_state_dict({"module._orig_mod.ln_final.weight": value, "module.lm_head.weight": value,
                                "layers.0.ln1.weight": value})
    assert list(cleaned) == ["ln_final.weight", "lm_head.weight", "layers.0.ln1.weight"]


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))

    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random(), random.gauss(0, 1))
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_load_model_rebuilds_the_same_function(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    config = RunConfig(name="tiny", model=MODEL).with_overrides({"training.max_steps": 1,
                                                                 "optimizer.warmup_steps": 0,
                                                                 "data.train_tokens": "t.npy",
                                                                 "data.valid_tokens": "v.npy"})
    save_model(tmp_path / "model.pt", model, config)
    save_training_state(tmp_path / "checkpoint.pt", model, optimizer, config, Progress(step=2))
    tokens = torch.randint(50, (3, 16))
    for path in ("model.pt", "checkpoint.pt"):
        loaded, loaded_config = load_model(tmp_path / path)
        assert loaded_config == config
        assert not loaded.training
        assert torch.equal(loaded(tokens), model(tokens))
    state = load_training_state(tmp_path / "checkpoint.pt")
    assert state["progress"] == Progress(step=2)
    assert state["iteration"] == 2


def test_unreadable_checkpoints_give_clear_errors(tmp_path):
    model, optimizer = trained_model_and_optimizer()
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt", model, optimizer)
    (tmp_path / "broken.pt").write_bytes(b"\x80\x04 truncated")
    with pytest.raises(ValueError, match="broken.pt"):
        load_model(tmp_path / "broken.pt")
    save_checkpoint(model, optimizer, 1, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="no run config"):
        load_model(tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="not a resumable"):
        load_training_state(tmp_path / "plain.pt")
