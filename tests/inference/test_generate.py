"""Sampling rules, determinism, KV-cache equality and the `tinylm generate` command."""
import json
from collections import Counter

import pytest
import torch
from tiny_run import write_summary

from tinylm.checkpoint import save_model
from tinylm.cli import main
from tinylm.config import ModelConfig, RunConfig
from tinylm.inference.generate import END_OF_TEXT, generate, sample_next_token
from tinylm.nn import build_model
from tinylm.tokenizer import Tokenizer

TINY = ModelConfig(vocab_size=257, context_length=16, d_model=16, num_layers=2, num_heads=2, d_ff=32)


def test_temperature_zero_is_argmax():
    logits = torch.tensor([0.1, 3.0, -2.0, 2.9])
    assert all(sample_next_token(logits, 0.0, 0.5, torch.Generator().manual_seed(s)) == 1 for s in range(5))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.05, 0.5, 0.3, 0.15])
    logits = torch.log(probs)
    generator = torch.Generator().manual_seed(0)
    # 0.5 + 0.3 = 0.8 >= 0.75: tokens 1 and 2 only, in ratio 5:3
    counts = Counter(sample_next_token(logits, 1.0, 0.75, generator) for _ in range(4000))
    assert set(counts) == {1, 2}
    assert counts[1] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)
    # top_p below the largest probability: greedy
    assert {sample_next_token(logits, 1.0, 0.2, generator) for _ in range(50)} == {1}
    # top_p 1: every token, in proportion
    counts = Counter(sample_next_token(logits, 1.0, 1.0, generator) for _ in range(8000))
    for token, p in enumerate(probs.tolist()):
        assert counts[token] / 8000 == pytest.approx(p, abs=0.02)


def test_temperature_sharpens_and_flattens():
    logits = torch.log(torch.tensor([0.6, 0.4]))
    generator = torch.Generator().manual_seed(1)
    # T = 0.5 squares the odds: 0.36 : 0.16 -> P(0) = 0.692
    counts = Counter(sample_next_token(logits, 0.5, 1.0, generator) for _ in range(8000))
    assert counts[0] / 8000 == pytest.approx(0.36 / 0.52, abs=0.02)


def _model(attention="reference", seed=0, **changes):
    torch.manual_seed(seed)
    return build_model(ModelConfig(**{**TINY.__dict__, **changes}), attention=attention).eval()


@pytest.mark.parametrize("attention", ["reference", "fused"])
@pytest.mark.parametrize("temperature, top_p", [(0.0, 1.0), (1.0, 0.9)])
def test_kv_cache_gives_the_same_tokens_even_past_the_context(attention, temperature, top_p):
    model = _model(attention)
    prompt = [5, 70, 200, 33]
    # 4 + 30 tokens > context 16: the window slides in both paths
    cached = generate(model, prompt, 30, temperature, top_p, seed=3, use_cache=True)
    uncached = generate(model, prompt, 30, temperature, top_p, seed=3, use_cache=False)
    assert len(cached.token_ids) == 30
    assert cached == uncached


def test_same_seed_same_text_other_seed_other_text():
    model = _model()
    a = generate(model, [1, 2, 3], 12, temperature=1.5, top_p=1.0, seed=7)
    assert a == generate(model, [1, 2, 3], 12, temperature=1.5, top_p=1.0, seed=7)
    assert a != generate(model, [1, 2, 3], 12, temperature=1.5, top_p=1.0, seed=8)


def test_generation_stops_at_end_of_text():
    model = _model()
    free = generate(model, [1, 2], 5, temperature=0.0, eot_id=None)
    assert len(free.token_ids) == 5 and not free.stopped_at_eot
    first, second = free.token_ids[:2]
    assert first != second  # (true for this seed) so the stop below is at the second token
    stopped = generate(model, [1, 2], 5, temperature=0.0, eot_id=second)
    assert stopped.token_ids == [first] and stopped.stopped_at_eot


# ---- the command ---------------------------------------------------------------------------

@pytest.fixture
def runs(tmp_path):
    """Three run directories: a diverged one (lowest loss on paper), and two usable ones."""
    tokenizer_dir = tmp_path / "tok"
    Tokenizer({i: bytes([i]) for i in range(256)}, [], [END_OF_TEXT]).save(tokenizer_dir)
    dirs = []
    candidates = [("diverged", "diverged", 0.5), ("good", "completed", 2.0), ("worse", "early_stopped", 3.0)]
    for name, status, loss in candidates:
        config = RunConfig(name=name, model=TINY)
        config.training.max_steps, config.optimizer.warmup_steps = 1, 0
        config.data.train_tokens = config.data.valid_tokens = "unused.npy"
        config.data.tokenizer_dir = str(tokenizer_dir)
        run_dir = tmp_path / name
        run_dir.mkdir()
        save_model(run_dir / "model.pt", _model(seed=len(dirs)), config)
        write_summary(run_dir, status=status, final_val_loss=loss)
        dirs.append(str(run_dir))
    return dirs


def test_generate_command_picks_the_best_usable_run_and_samples_a_grid(runs, tmp_path):
    out = tmp_path / "samples.json"
    argv = ["generate", "--run-dir", *runs, "--prompt", "Once upon", "--temperature", "0", "1.0",
            "--top-p", "0.9", "--max-new-tokens", "6", "--seeds", "0", "1", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["run"]["name"] == "good"
    assert [c["usable"] for c in result["candidates"]] == [False, True, True]
    assert result["settings"]["temperatures"] == [0.0, 1.0]
    assert [(s["temperature"], s["seed"]) for s in result["samples"]] == [(0.0, 0), (0.0, 1), (1.0, 0), (1.0, 1)]
    greedy = result["samples"][:2]
    assert greedy[0]["completion"] == greedy[1]["completion"]  # greedy ignores the seed
    for sample in result["samples"]:
        assert sample["text"].startswith("Once upon")
        assert sample["num_new_tokens"] == 6 or sample["stopped_at_eot"]
    # the same command again gives the same file: seeds make it reproducible
    again = tmp_path / "again.json"
    assert main(argv[:-1] + [str(again)]) == 0
    assert json.loads(again.read_text()) == result


@pytest.mark.parametrize("extra, message", [
    (["--top-p", "0"], "--top-p"),
    (["--temperature", "-1"], "--temperature"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_generate_command_rejects_bad_settings(runs, tmp_path, capsys, extra, message):
    argv = ["generate", "--run-dir", *runs, "--prompt", "x", "--out", str(tmp_path / "o.json"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_generate_command_needs_a_usable_run(runs, tmp_path, capsys):
    assert main(["generate", "--run-dir", runs[0], "--prompt", "x", "--out", str(tmp_path / "o.json")]) == 2
    assert "all diverged or unfinished" in capsys.readouterr().err
    assert main(["generate", "--run-dir", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "o.json")]) == 2
    assert "summary.json' does not exist (not a finished run)" in capsys.readouterr().err
