"""`tinylm export-hf`: the folder loads in transformers offline and computes what our model computes,
says where it came from, and goes only where it replaces nothing of someone else's."""
import dataclasses
import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: loading must never need the network
transformers = pytest.importorskip("transformers", reason="export-hf needs the `hf` extra (transformers)")
pytest.importorskip("safetensors", reason="export-hf needs the `hf` extra (safetensors)")
pytest.importorskip("tokenizers", reason="export-hf needs the `hf` extra (tokenizers)")
import yaml  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors import safe_open  # noqa: E402
from tiny_run import one_thread, train, write_config, write_summary  # noqa: E402

from tinylm.checkpoint import load_model, save_model  # noqa: E402
from tinylm.cli import main  # noqa: E402
from tinylm.config import ModelConfig, RunConfig  # noqa: E402
from tinylm.inference.export_hf import MARKER, check_exportable, pairs_to_halves  # noqa: E402
from tinylm.inference.generate import END_OF_TEXT, generate  # noqa: E402
from tinylm.nn import RotaryPositionalEmbedding, build_model  # noqa: E402
from tinylm.tokenizer import Tokenizer, train_bpe  # noqa: E402
from tinylm.training.outputs import RunFolder  # noqa: E402
from tinylm.training.summary import Summary  # noqa: E402

# Context 64 so that a prompt and 50 greedy tokens fit without the window sliding.
SHAPE = dict(vocab_size=320, context_length=64, d_model=32, num_layers=2, num_heads=4, d_ff=96)

VARIED_TEXT = [
    "Once upon a time, there was a little girl named Lily.",
    "She said: \"I'm sure you'll love it, won't you? They've said we'd go.\"",
    "numbers 3.14159, 1,000,000 and 2026-12-01; ½ ² ٣",
    "tabs\tand\t\tspaces     between   words   \n\n\n  indented\n\t\n",
    "trailing spaces   ",
    "   leading spaces",
    "unicode: naïve café, Ελληνικά, русский, 日本語のテキスト, 한국어",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flags 🇫🇷 and ☃",
    f"one story.{END_OF_TEXT}Another story.{END_OF_TEXT}",
    f"{END_OF_TEXT} at the start, twice{END_OF_TEXT}{END_OF_TEXT} and inside wo{END_OF_TEXT}rds",
    "<|endoftext| almost special <|endoftext|>> and <|end",
    "odd spaces: \u00a0no-break\u2009thin\u3000ideographic\u2028line sep\u0085next line\x1cfile sep\r\n",
    "'s 'S 'll 'LL ''' ' s rock'n'roll",
    "",
]


def write_tokenizer(directory):
    """A BPE trained on the varied text above, so merges cross letters, numbers, unicode and spaces."""
    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(VARIED_TEXT * 20), encoding="utf-8")
    vocab, merges = train_bpe(corpus, SHAPE["vocab_size"], [END_OF_TEXT], workers=1)
    Tokenizer(vocab, merges, [END_OF_TEXT]).save(directory / "tokenizer")
    return directory / "tokenizer"


def save_run(directory, tokenizer_dir, seed=0, status="completed", loss=2.0, **model_changes):
    """A run directory holding randomly initialised weights (model.pt, summary.json)."""
    config = RunConfig(name=directory.name, model=ModelConfig(**{**SHAPE, **model_changes}))
    config.training.max_steps, config.optimizer.warmup_steps = 1, 0
    config.data.train_tokens = config.data.valid_tokens = "unused.npy"
    config.data.tokenizer_dir = str(tokenizer_dir)
    torch.manual_seed(seed)
    directory.mkdir(parents=True)
    save_model(directory / "model.pt", build_model(config.model), config)
    write_summary(directory, status=status, final_val_loss=loss)
    return directory


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def random_run(tmp_path_factory, tokenizer_dir):
    return save_run(tmp_path_factory.mktemp("random") / "run", tokenizer_dir)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tokenizer_dir):
    """A few dozen steps of real training on the tiny synthetic corpus (ids below 64 of 320)."""
    directory = tmp_path_factory.mktemp("trained")
    config = write_config(directory, model=SHAPE, data={"tokenizer_dir": str(tokenizer_dir)},
                          training={"max_steps": 40})
    with one_thread():
        assert train(config, directory / "run", directory / "checkpoints") == 0
    return directory / "run"


def export(run_dir, out, *options):
    assert main(["export-hf", "--run-dir", str(run_dir), "--out", str(out), *options]) == 0
    return out


def refused(capsys, run_dir, out, *options) -> str:
    """The one-line error of an export that must not happen."""
    assert main(["export-hf", "--run-dir", str(run_dir), "--out", str(out), *options]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("tinylm export-hf: error: --out "), error
    return error


def load_hf(out):
    model = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(out)


def test_pair_rotation_equals_half_rotation_of_permuted_rows():
    """Our RoPE on a head, permuted, equals Llama's rotate-half RoPE on the permuted head."""
    d_head, seq = 8, 5
    rope = RotaryPositionalEmbedding(10000.0, d_head, seq)
    x = torch.randn(seq, d_head, dtype=torch.float64)
    positions = torch.arange(seq)
    ours = pairs_to_halves(rope(x, positions).T, 1).T  # rotate pairs, then reorder
    halves = pairs_to_halves(x.T, 1).T
    angles = torch.outer(positions.double(), 10000.0 ** (-torch.arange(0, d_head, 2).double() / d_head))
    cos, sin = torch.cos(angles).repeat(1, 2), torch.sin(angles).repeat(1, 2)
    rotate_half = torch.cat((-halves[:, d_head // 2:], halves[:, :d_head // 2]), dim=-1)
    torch.testing.assert_close(ours, halves * cos + rotate_half * sin)


def test_exported_files_and_config(random_run, tmp_path):
    out = export(random_run, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} == {"config.json", "generation_config.json", "model.safetensors",
                                               "tokenizer.json", "tokenizer_config.json", "README.md", MARKER}
    config = json.loads((out / "config.json").read_text())
    model, run_config = load_model(random_run / "model.pt")
    eot_id = Tokenizer.from_dir(run_config.data.tokenizer_dir).special_ids[END_OF_TEXT]
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (
        SHAPE["d_model"], SHAPE["d_ff"], SHAPE["num_layers"])
    assert config["num_attention_heads"] == config["num_key_value_heads"] == SHAPE["num_heads"]
    assert config["vocab_size"] == SHAPE["vocab_size"]
    assert config["max_position_embeddings"] == SHAPE["context_length"]
    assert config["rms_norm_eps"] == model.ln_final.eps
    assert config["tie_word_embeddings"] is False
    assert config["bos_token_id"] == config["eos_token_id"] == eot_id
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("run_name", ["random_run", "trained_run"])
def test_logits_and_greedy_decoding_equal_ours(run_name, request, tmp_path):
    run_dir = request.getfixturevalue(run_name)
    ours, config = load_model(run_dir / "model.pt")
    hf, _ = load_hf(export(run_dir, tmp_path / "hf"))
    ids = torch.randint(0, SHAPE["vocab_size"], (2, SHAPE["context_length"]),
                        generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), one_thread():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=0)

        eot_id = Tokenizer.from_dir(config.data.tokenizer_dir).special_ids[END_OF_TEXT]
        prompt = [3, 4, 5, 6, 7, 8, 9, 10]
        expected = generate(ours, prompt, 50, temperature=0.0, eot_id=eot_id)
        assert not expected.stopped_at_eot  # so all 50 tokens are compared
        got = hf.generate(torch.tensor([prompt]), max_new_tokens=50, do_sample=False)[0, len(prompt):]
    assert got.tolist() == expected.token_ids


@pytest.fixture(scope="module")
def tokenizers_pair(random_run, tokenizer_dir, tmp_path_factory):
    """(the exported tokenizer as transformers loads it, ours)."""
    hf_tokenizer = load_hf(export(random_run, tmp_path_factory.mktemp("tokenizer") / "hf"))[1]
    return hf_tokenizer, Tokenizer.from_dir(tokenizer_dir)


def test_tokenizer_gives_our_ids_and_text(tokenizers_pair):
    hf_tokenizer, ours = tokenizers_pair
    assert hf_tokenizer.convert_tokens_to_ids(END_OF_TEXT) == ours.special_ids[END_OF_TEXT]
    assert hf_tokenizer.eos_token == hf_tokenizer.bos_token == END_OF_TEXT
    assert set(hf_tokenizer("x")) == {"input_ids", "attention_mask"}  # what Llama's generate accepts
    for text in VARIED_TEXT + ["\n".join(VARIED_TEXT)]:
        ids = ours.encode(text)
        assert hf_tokenizer(text)["input_ids"] == ids, text  # and no BOS is added
        assert hf_tokenizer.decode(ids) == ours.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(), st.just(END_OF_TEXT), st.sampled_from(VARIED_TEXT)), max_size=4))
def test_tokenizer_gives_our_ids_on_any_text(tokenizers_pair, pieces):
    hf_tokenizer, ours = tokenizers_pair
    text = "".join(pieces)
    assert hf_tokenizer(text)["input_ids"] == ours.encode(text)


@pytest.mark.parametrize("setting, value", [("norm", "post"), ("norm", "none"), ("position", "none"),
                                            ("ffn", "silu")])
def test_variants_llama_cannot_express_are_refused(setting, value, tokenizer_dir, tmp_path, capsys):
    run_dir = save_run(tmp_path / f"{setting}-{value}", tokenizer_dir, **{setting: value})
    assert main(["export-hf", "--run-dir", str(run_dir), "--out", str(tmp_path / "hf")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert str(run_dir) in error and f"model.{setting}={value!r}" in error
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ValueError, match=f"model.{setting}"):
        check_exportable(ModelConfig(**{**SHAPE, setting: value}), "run")


def test_a_run_without_a_fitting_tokenizer_is_refused(tokenizer_dir, tmp_path, capsys):
    small = save_run(tmp_path / "small-vocab", tokenizer_dir, vocab_size=SHAPE["vocab_size"] - 20)
    assert main(["export-hf", "--run-dir", str(small), "--out", str(tmp_path / "hf")]) == 2
    assert f"more than model.vocab_size={SHAPE['vocab_size'] - 20}" in capsys.readouterr().err
    untokenized = save_run(tmp_path / "no-tokenizer", "")
    assert main(["export-hf", "--run-dir", str(untokenized), "--out", str(tmp_path / "hf")]) == 2
    assert "data.tokenizer_dir" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_the_run_generate_would_pick_is_exported(tokenizer_dir, tmp_path, capsys):
    runs = [save_run(tmp_path / name, tokenizer_dir, seed=seed, status=status, loss=loss)
            for seed, (name, status, loss) in enumerate([("diverged", "diverged", 0.5), ("good", "completed", 2.0),
                                                         ("worse", "completed", 3.0)])]
    out = tmp_path / "hf"
    assert main(["export-hf", "--run-dir", *map(str, runs), "--out", str(out)]) == 0
    assert str(runs[1]) in capsys.readouterr().out
    hf, _ = load_hf(out)
    ours, _ = load_model(runs[1] / "model.pt")
    assert torch.equal(hf.lm_head.weight, ours.lm_head.weight)


def test_missing_run_dir_or_model_is_a_clear_error(tmp_path, capsys):
    assert main(["export-hf", "--run-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "hf")]) == 2
    assert "nope" in capsys.readouterr().err
    run_dir = tmp_path / "no-model"
    run_dir.mkdir()
    write_summary(run_dir, final_val_loss=2.0)
    assert main(["export-hf", "--run-dir", str(run_dir), "--out", str(tmp_path / "hf")]) == 2
    assert "model.pt" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


# ---- where it came from ----------------------------------------------------------------------

def card_header(card: str) -> dict:
    """The YAML between the `---` lines that open a Hugging Face model card."""
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_the_card_and_the_weights_say_where_the_model_came_from(trained_run, tmp_path):
    out = export(trained_run, tmp_path / "hf")
    load_hf(out)  # the card and the marker do not disturb loading
    summary = Summary.read(RunFolder(trained_run).summary)
    _, config = load_model(trained_run / "model.pt")

    card = (out / "README.md").read_text()
    header = card_header(card)
    assert header["library_name"] == "transformers" and header["pipeline_tag"] == "text-generation"
    assert "tinylm" in header["tags"] and header["model_name"] == summary.name
    hub = ModelCard.load(out / "README.md").data  # as the Hub's own library reads it
    assert (hub.library_name, hub.pipeline_tag, hub.tags) == ("transformers", "text-generation", header["tags"])
    provenance = summary.provenance
    for shown in (f"`{summary.name}` (`{trained_run}`)", f"{summary.final_val_loss:.4f} nats/token",
                  f"{summary.final_train_loss:.4f} nats/token", f"{summary.steps:,} steps", config.data.train_tokens,
                  config.data.valid_tokens, config.data.tokenizer_dir, provenance.torch_version,
                  provenance.device_name, provenance.lock or "| lock | n/a |",
                  provenance.git_commit or "| git commit | n/a |", json.dumps(config.to_dict(), indent=2)):
        assert shown in card, shown

    with safe_open(out / "model.safetensors", "pt") as weights:
        metadata = weights.metadata()
    assert metadata["format"] == "pt"  # what transformers checks
    assert json.loads(metadata["tinylm.provenance"]) == dataclasses.asdict(provenance)
    assert RunConfig.from_dict(json.loads(metadata["tinylm.config"])) == config
    run = json.loads(metadata["tinylm.run"])
    assert (run["name"], run["run_dir"], run["status"], run["steps"], run["tokens"]) == (
        summary.name, str(trained_run), summary.status, summary.steps, summary.tokens)
    assert (run["final_train_loss"], run["final_val_loss"], run["best_val_loss"]) == (
        summary.final_train_loss, summary.final_val_loss, summary.best_val_loss)


# ---- which folders it writes into ------------------------------------------------------------

def test_an_earlier_export_is_replaced_and_nothing_else(random_run, tokenizer_dir, tmp_path, capsys):
    out = export(random_run, tmp_path / "hf")
    (out / "notes.txt").write_text("mine")
    other = save_run(tmp_path / "other", tokenizer_dir, seed=1)
    export(other, out)  # over an earlier export: recognised by its marker
    assert json.loads((out / MARKER).read_text())["run_dir"] == str(other)
    assert (out / "notes.txt").read_text() == "mine"
    assert f"`{other}`" in (out / "README.md").read_text()

    interrupted = tmp_path / "interrupted"  # the marker is written first, so this is ours too
    interrupted.mkdir()
    (interrupted / MARKER).write_text("{}")
    (interrupted / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]')
    export(random_run, interrupted)
    load_hf(interrupted)
    empty = tmp_path / "empty"
    empty.mkdir()
    export(random_run, empty)


def test_a_folder_of_other_files_is_refused_unless_forced(random_run, tmp_path, capsys):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    files = {"config.json": '{"model_type": "bert"}', "README.md": "# Another project\n"}
    for name, text in files.items():
        (theirs / name).write_text(text)
    error = refused(capsys, random_run, theirs)
    assert f"--out '{theirs}' holds files that are not a tinylm export (README.md, config.json)" in error
    assert "--force" in error
    assert {p.name: p.read_text() for p in theirs.iterdir()} == files  # untouched, nothing added

    export(random_run, theirs, "--force")
    assert json.loads((theirs / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (theirs / MARKER).is_file()


def test_an_out_that_is_or_is_under_a_file_is_refused(random_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    assert refused(capsys, random_run, blocker) == \
        f"tinylm export-hf: error: --out '{blocker}' is a file, not a folder\n"
    assert refused(capsys, random_run, blocker / "hf", "--force") == \
        f"tinylm export-hf: error: --out '{blocker / 'hf'}': '{blocker}' is a file, not a folder\n"
    assert blocker.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["a-file"]
