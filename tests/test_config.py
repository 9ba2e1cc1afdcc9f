"""tinylm.config: every numeric field finite and in range, the warm-up within the run, and every
architecture choice (tinylm.architecture) one that tinylm.nn builds."""
from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import torch

import tinylm.nn
from tinylm.architecture import ATTENTIONS, FFNS, NORMS, POSITIONS
from tinylm.cli import main
from tinylm.config import ModelConfig, RunConfig
from tinylm.nn import TransformerBlock, build_model

NN_DIR = Path(tinylm.nn.__file__).parent


def valid(**overrides) -> RunConfig:
    return RunConfig().with_overrides({"training.max_steps": 1000, "data.train_tokens": "t.npy",
                                       "data.valid_tokens": "v.npy", **overrides})


NON_FINITE = [math.nan, math.inf, -math.inf]
BAD_VALUES = {
    "model.rope_theta": [*NON_FINITE, 0.0, -1.0],
    "optimizer.lr": [*NON_FINITE, 0.0, -1e-3],
    "optimizer.min_lr_ratio": [*NON_FINITE, -0.1, 1.5],
    "optimizer.eps": [*NON_FINITE, 0.0, -1e-8],
    "optimizer.weight_decay": [*NON_FINITE, -0.01],
    "optimizer.grad_clip": [*NON_FINITE, -1.0],
    "training.early_stop_loss": [*NON_FINITE, 0.0, -2.0],
    "training.divergence_factor": [*NON_FINITE, 1.0, 0.5],
    "training.seed": [-1],
    "optimizer.warmup_steps": [-1],
}


@pytest.mark.parametrize("key, value", [(key, value) for key, values in BAD_VALUES.items() for value in values])
def test_a_bad_number_is_an_error_naming_its_key(key, value):
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}: must be "):
        valid(**{key: value})


@pytest.mark.parametrize("betas, key", [([0.9, math.nan], "optimizer.betas[1]"), ([1.0, 0.99], "optimizer.betas[0]"),
                                        ([math.inf, 0.99], "optimizer.betas[0]")])
def test_betas_are_checked_one_by_one(betas, key):
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}: must be in \[0, 1\)"):
        valid(**{"optimizer.betas": betas})


def test_betas_must_be_exactly_two():
    with pytest.raises(ValueError, match=r"^optimizer\.betas: expected a list of 2 values"):
        valid(**{"optimizer.betas": [0.9, 0.99, 0.5]})


def test_numbers_given_as_strings_are_checked_too():
    """YAML reads 1e-3 as a string; "nan" and "inf" become floats there and must fail the same way."""
    for text in ("nan", "inf"):
        with pytest.raises(ValueError, match=r"^optimizer\.weight_decay: must be a finite number >= 0"):
            valid(**{"optimizer.weight_decay": text})


def test_the_good_edges_pass():
    config = valid(**{"optimizer.min_lr_ratio": 1.0, "optimizer.weight_decay": 0.0, "optimizer.grad_clip": 0.0,
                      "optimizer.betas": [0.0, 0.0], "optimizer.warmup_steps": 1000, "training.seed": 0})
    assert config.optimizer.warmup_steps == config.total_steps


def test_a_warmup_longer_than_the_run_is_an_error():
    with pytest.raises(ValueError, match=r"^optimizer\.warmup_steps: 1001 is longer than the run \(1000 steps\)"):
        valid(**{"optimizer.warmup_steps": 1001})
    # With a token budget the run's length is its steps: 8 x 256 tokens a step, 10 steps.
    tokens = {"training.max_steps": None, "training.max_tokens": 10 * 8 * 256, "training.batch_size": 8}
    assert valid(**tokens, **{"optimizer.warmup_steps": 10}).total_steps == 10
    with pytest.raises(ValueError, match=r"^optimizer\.warmup_steps: 11 is longer than the run \(10 steps\)"):
        valid(**tokens, **{"optimizer.warmup_steps": 11})


@pytest.mark.parametrize("argv, message", [
    (["--cpu-memory-budget-mb", "-5"], "--cpu-memory-budget-mb: must be a finite number > 0, got -5"),
    (["--cpu-memory-budget-mb", "0"], "--cpu-memory-budget-mb: must be a finite number > 0, got 0"),
    (["--cpu-memory-budget-mb", "nan"], "--cpu-memory-budget-mb: must be a finite number > 0, got nan"),
    (["--cpu-memory-budget-mb", "inf"], "--cpu-memory-budget-mb: must be a finite number > 0, got inf"),
    (["--cpu-memory-budget-mb", "8", "--max-batch", "0"], "--max-batch: must be a positive integer, got 0"),
])
def test_max_batch_checks_its_arguments_before_any_work(tmp_path, capsys, argv, message):
    """The run config does not even exist: the arguments are checked before it is read."""
    out = tmp_path / "max_batch.json"
    assert main(["max-batch", "--config", str(tmp_path / "absent.json"), "--out", str(out), *argv]) == 2
    assert capsys.readouterr().err == f"tinylm max-batch: error: {message}\n"
    assert not out.exists()


# ---- architecture choices: offered by config, built by nn --------------------------------------

@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("ffn", FFNS)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("norm", NORMS)
def test_nn_builds_and_runs_every_choice_a_config_offers(norm, position, ffn, attention):
    model = ModelConfig(vocab_size=16, context_length=4, d_model=8, num_layers=1, num_heads=2, d_ff=8,
                        norm=norm, position=position, ffn=ffn)
    model.validate()
    logits = build_model(model, attention=attention)(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, 16)


@pytest.mark.parametrize("argument", ["norm", "position", "ffn", "attention"])
def test_nn_refuses_a_variant_it_does_not_know(argument):
    with pytest.raises(ValueError, match=f"^{argument}: 'nope' is not one of "):
        TransformerBlock(8, 2, 16, 4, 10000.0, **{argument: "nope"})


def test_nn_does_not_import_config():
    for path in NN_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "tinylm.config", path.name
            elif isinstance(node, ast.Import):
                assert all(alias.name != "tinylm.config" for alias in node.names), path.name
