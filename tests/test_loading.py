"""Corrupt, foreign and hostile input files, one case or more per file type: each fails with one
line that names the file, from the library (ValueError / FileNotFoundError) and from the command
line (`tinylm CMD: error: ...`, exit 2), never with a traceback or advice to load it unsafely."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import write_config, write_summary

from tinylm.checkpoint import load_checkpoint, load_model, load_training_state, model_state_dict, save_model
from tinylm.cli import main
from tinylm.config import ModelConfig, RunConfig
from tinylm.data.tokens import load_tokens
from tinylm.files import os_error_text, read_json
from tinylm.nn import build_model
from tinylm.optim import AdamW
from tinylm.report.runs import load_runs
from tinylm.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(vocab_size=300, context_length=8, d_model=16, num_layers=1, num_heads=2, d_ff=32)
UNSAFE_ADVICE = ("Traceback", "weights_only", "allow_pickle", "trusted source", "unsafe")


def tiny_config(model: ModelConfig = TINY, **overrides) -> RunConfig:
    return RunConfig(name="tiny", model=model).with_overrides({
        "training.max_steps": 1, "optimizer.warmup_steps": 0, "training.device": "cpu",
        "data.train_tokens": "t.npy", "data.valid_tokens": "v.npy", **overrides})


def assert_one_line(message: str, path) -> None:
    assert "\n" not in message.strip(), message
    assert os.fspath(path) in message, message
    assert not any(advice in message for advice in UNSAFE_ADVICE), message
    assert len(message) < 400, message


def library_error(load, path, error=ValueError) -> str:
    with pytest.raises(error) as info:
        load(path)
    assert_one_line(str(info.value), path)
    return str(info.value)


def cli_error(capsys, argv: list[str], path) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tinylm {argv[0]}: error: ") and err.count("\n") == 1, err
    assert_one_line(err, path)
    return err


@pytest.fixture
def model_pt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_model(path, build_model(TINY), tiny_config())
    return path


@pytest.fixture
def tokens_npy(tmp_path):
    path = tmp_path / "good.npy"
    np.save(path, np.arange(100, dtype=np.uint16))
    return path


# ---- token arrays --------------------------------------------------------------------------

def _truncated(path, keep) -> None:
    np.save(path, np.arange(1000, dtype=np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


TOKEN_FILES = {
    "zero bytes": (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    "truncated header": (lambda p: _truncated(p, lambda n: 40), "is truncated (inside its header)"),
    "truncated data": (lambda p: _truncated(p, lambda n: n - 10), "is truncated (shorter than its header says)"),
    "floats": (lambda p: np.save(p, np.zeros(50, dtype=np.float32)), "must hold a 1-D integer array"),
    "matrix": (lambda p: np.save(p, np.zeros((5, 5), dtype=np.uint16)), "must hold a 1-D integer array"),
    "npz archive": (lambda p: np.savez(p.with_suffix(""), a=np.arange(5)) or
                    p.with_suffix(".npz").rename(p), "is a zip archive"),
    "pickle": (lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), "is not a .npy array"),
    "objects": (lambda p: np.save(p, np.array([{}, {}], dtype=object), allow_pickle=True),
                "holds Python objects"),
    "one token": (lambda p: np.save(p, np.array([5], dtype=np.uint16)), "holds 1 tokens, fewer than the 2"),
}


@pytest.mark.parametrize("case", TOKEN_FILES)
def test_bad_token_arrays(tmp_path, capsys, model_pt, case):
    write, phrase = TOKEN_FILES[case]
    path = tmp_path / "tokens.npy"
    write(path)
    assert phrase in library_error(lambda p: load_tokens(p, min_tokens=2), path)
    err = cli_error(capsys, ["evaluate", "--checkpoint", str(model_pt), "--tokens", str(path), "--out",
                             str(tmp_path / "eval.json"), "--device", "cpu"], path)
    assert phrase in err
    assert not (tmp_path / "eval.json").exists()


def test_negative_token_ids_are_named(tmp_path, capsys, model_pt):
    path = tmp_path / "signed.npy"
    np.save(path, np.array([1, 2, -3, 4], dtype=np.int64))
    err = cli_error(capsys, ["evaluate", "--checkpoint", str(model_pt), "--tokens", str(path), "--out",
                             str(tmp_path / "eval.json"), "--device", "cpu"], path)
    assert "negative token id -3" in err


def test_a_token_array_shorter_than_a_training_window(tmp_path, capsys):
    config = write_config(tmp_path)
    short = tmp_path / "short.npy"
    np.save(short, np.arange(10, dtype=np.uint16))
    data = json.loads(config.read_text())
    data["data"]["train_tokens"] = str(short)
    config.write_text(json.dumps(data))
    err = cli_error(capsys, ["train", "--config", str(config), "--out-dir", str(tmp_path / "out")], short)
    assert "data.train_tokens" in err and "context_length" in err


# ---- checkpoints and model.pt -----------------------------------------------------------------

class RunsCode:
    """Unpickling this object would open (create) the file `marker`: code run at load time."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_random_bytes_are_never_loaded_and_never_crash(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "random.pt"
    # Prefixes that steer torch.load down each of its paths: a zip archive, a pickle, neither.
    for prefix in (b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b""):
        for _ in range(25):
            path.write_bytes(prefix + rng.bytes(int(rng.integers(1, 2000))))
            message = library_error(load_model, path)
            assert "is not a readable checkpoint" in message or "refused" in message


@pytest.mark.parametrize("protocol", ["torch.save", "pickle protocol 2"])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, capsys, tokens_npy, protocol):
    marker, path = tmp_path / "ran", tmp_path / "hostile.pt"
    payload = {"model": RunsCode(marker), "config": tiny_config().to_dict()}
    if protocol == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert "refused" in library_error(load_model, path)
    err = cli_error(capsys, ["evaluate", "--checkpoint", str(path), "--tokens", str(tokens_npy),
                             "--out", str(tmp_path / "eval.json"), "--device", "cpu"], path)
    assert "refused: unpickling it would load io.open" in err
    assert not marker.exists()


def _stored(path, **state) -> None:
    torch.save(state, path)


CHECKPOINT_FILES = {
    "zero bytes": (lambda p, good: p.write_bytes(b""), "is empty (0 bytes)"),
    "truncated": (lambda p, good: p.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2]),
                  "is not a readable checkpoint"),
    "a list": (lambda p, good: torch.save([1, 2, 3], p), "holds a list, not a dict"),
    "weights of another shape": (lambda p, good: save_model(p, build_model(TINY), tiny_config(
        dataclasses.replace(TINY, d_model=32))),
        "token_embeddings.weight is (300, 16) in the file, (300, 32) in the model"),
    "a tensor missing": (lambda p, good: _stored(p, config=tiny_config().to_dict(), model={
        k: v for k, v in model_state_dict(build_model(TINY)).items() if k != "lm_head.weight"}),
        "its weights lack the model's lm_head.weight"),
    "an invalid config": (lambda p, good: _stored(p, model=model_state_dict(build_model(TINY)), config={
        **tiny_config().to_dict(), "model": {**dataclasses.asdict(TINY), "d_modle": 16}}),
        "its run config is invalid: model.d_modle: unknown config key"),
    "no config": (lambda p, good: _stored(p, model=model_state_dict(build_model(TINY))), "holds no run config"),
}


@pytest.mark.parametrize("case", CHECKPOINT_FILES)
def test_bad_model_files(tmp_path, capsys, model_pt, tokens_npy, case):
    write, phrase = CHECKPOINT_FILES[case]
    path = tmp_path / "bad.pt"
    write(path, model_pt)
    assert phrase in library_error(load_model, path)
    err = cli_error(capsys, ["evaluate", "--checkpoint", str(path), "--tokens", str(tokens_npy),
                             "--out", str(tmp_path / "eval.json"), "--device", "cpu"], path)
    assert phrase in err


def test_bad_training_checkpoints(tmp_path, model_pt):
    model = build_model(TINY)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    assert "not a training checkpoint (missing iteration, optimizer)" in library_error(
        lambda p: load_checkpoint(p, model, optimizer), model_pt)
    assert "not a resumable training checkpoint" in library_error(load_training_state, model_pt)
    other = build_model(dataclasses.replace(TINY, d_ff=48))
    path = tmp_path / "other.pt"
    _stored(path, model=model_state_dict(other), optimizer=optimizer.state_dict(), iteration=3)
    assert "its weights do not fit the model" in library_error(lambda p: load_checkpoint(p, model, optimizer), path)
    assert "does not exist" in library_error(load_training_state, tmp_path / "none.pt", FileNotFoundError)


def test_a_corrupt_resumable_checkpoint_stops_the_run_naming_it(tmp_path, capsys):
    config = write_config(tmp_path)
    checkpoint = tmp_path / "ckpt" / "checkpoint.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"\x80\x02garbage")
    err = cli_error(capsys, ["train", "--config", str(config), "--out-dir", str(tmp_path / "out"),
                             "--checkpoint-dir", str(checkpoint.parent)], checkpoint)
    assert "is not a readable checkpoint" in err


# ---- run configs, summaries and other JSON ----------------------------------------------------

JSON_FILES = {
    "zero bytes": (b"", "is empty, not JSON"),
    "cut short": (b'{"name": "tiny", "model": {', "is not valid JSON (Expecting property name"),
    "a list": (b"[1, 2]", "expected a JSON object, got a JSON array"),
    "latin-1": ('{"name": "caf\xe9"}'.encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 13)"),
}


@pytest.mark.parametrize("case", JSON_FILES)
def test_bad_run_configs(tmp_path, capsys, case):
    data, phrase = JSON_FILES[case]
    path = tmp_path / "run.json"
    path.write_bytes(data)
    assert phrase in library_error(RunConfig.load, path)
    assert phrase in cli_error(capsys, ["train", "--config", str(path), "--out-dir", str(tmp_path / "out")], path)
    assert phrase in cli_error(capsys, ["max-batch", "--config", str(path), "--out", str(tmp_path / "mb.json"),
                                        "--cpu-memory-budget-mb", "8"], path)


@pytest.mark.parametrize("setting, phrase", [
    ({"training": {"batch_sise": 8}}, "training.batch_sise: unknown config key"),
    ({"optimizer": {"weight_decay": float("nan")}}, "optimizer.weight_decay: must be a finite number >= 0, got nan"),
    ({"optimizer": {"warmup_steps": 50}, "training": {"max_steps": 40}}, "optimizer.warmup_steps: 50 is longer"),
])
def test_run_config_errors_name_the_file_and_the_key(tmp_path, capsys, setting, phrase):
    config = write_config(tmp_path, **setting)
    assert phrase in cli_error(capsys, ["train", "--config", str(config), "--out-dir", str(tmp_path / "out")],
                               config)


@pytest.mark.parametrize("case", JSON_FILES)
def test_bad_summaries(tmp_path, capsys, model_pt, case):
    data, phrase = JSON_FILES[case]
    run_dir = model_pt.parent
    (run_dir / "summary.json").write_bytes(data)
    (run_dir / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "train_loss": 5.0}\n')
    path = run_dir / "summary.json"
    assert phrase in cli_error(capsys, ["generate", "--run-dir", str(run_dir), "--prompt", "x", "--out",
                                        str(run_dir / "samples.json")], path)
    assert phrase in library_error(lambda p: load_runs([("a", p.parent)]), path)
    write_summary(run_dir, "tiny")
    (run_dir / "config.json").write_bytes(data)
    assert phrase in library_error(lambda p: load_runs([("a", p.parent)]), run_dir / "config.json")


def test_read_json_names_a_missing_file_and_the_hint(tmp_path):
    message = library_error(lambda p: read_json(p, "run summary", hint="is the run finished?"),
                            tmp_path / "summary.json", FileNotFoundError)
    assert message.endswith("does not exist (is the run finished?)")


# ---- tokenizer files ------------------------------------------------------------------------

def _tokenizer_dir(tmp_path):
    directory = tmp_path / "tok"
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab"}
    Tokenizer(vocab, [(b"a", b"b")], ["<|endoftext|>"]).save(directory)
    return directory


TOKENIZER_FILES = {
    "vocab.json not UTF-8": ("vocab.json", b'{"\xff": 0}', "is not UTF-8 text"),
    "vocab.json cut short": ("vocab.json", b'{"a": 0, ', "is not valid JSON"),
    "vocab.json a list": ("vocab.json", b'["a"]', "expected a JSON object"),
    "vocab.json bad id": ("vocab.json", b'{"a": "zero"}', "token 'a' has a bad or repeated id 'zero'"),
    "vocab.json foreign character": ("vocab.json", '{"\u65e5": 0}'.encode(), "outside GPT-2's byte alphabet"),
    "merges.txt not UTF-8": ("merges.txt", b"#version: 0.2\na \xffb\n", "is not UTF-8 text (byte 0xff"),
    "merges.txt three tokens": ("merges.txt", b"#version: 0.2\na b c\n", "line 2: expected two tokens"),
    "merges.txt unknown token": ("merges.txt", b"#version: 0.2\nab ab\n", "uses a token not made by an earlier merge"),
    "special_tokens.json cut short": ("special_tokens.json", b'["<|endoftext|>"', "is not valid JSON"),
    "special_tokens.json an object": ("special_tokens.json", b'{"a": 1}', "expected a JSON array"),
    "special_tokens.json a number": ("special_tokens.json", b"[7]", "special tokens must be non-empty strings"),
}


@pytest.mark.parametrize("case", TOKENIZER_FILES)
def test_bad_tokenizer_files(tmp_path, capsys, case):
    name, data, phrase = TOKENIZER_FILES[case]
    directory = _tokenizer_dir(tmp_path)
    (directory / name).write_bytes(data)
    assert phrase in library_error(lambda p: Tokenizer.from_dir(p.parent), directory / name)
    text = tmp_path / "text.txt"
    text.write_text("abab")
    err = cli_error(capsys, ["tokenize", "--tokenizer-dir", str(directory), "--input", str(text),
                             "--output", str(tmp_path / "ids.npy"), "--workers", "1", "--no-progress"],
                    directory / name)
    assert phrase in err
    assert not (tmp_path / "ids.npy").exists()



# ---- output folders, config values and other failed system calls ----------------------------

@pytest.mark.parametrize("option, under", [("--out-dir", False), ("--checkpoint-dir", False),
                                           ("--out-dir", True), ("--checkpoint-dir", True)])
def test_an_output_folder_that_is_or_is_under_a_file_is_named_in_the_option(tmp_path, capsys, option, under):
    config = write_config(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("mine\n")
    folder = blocker / "run" if under else blocker
    folders = {"--out-dir": tmp_path / "out", "--checkpoint-dir": tmp_path / "ckpt", option: folder}
    err = cli_error(capsys, ["train", "--config", str(config), *(str(a) for pair in folders.items() for a in pair)],
                    blocker)
    problem = f": '{blocker}' is a file, not a folder" if under else " is a file, not a folder"
    assert f"tinylm train: error: {option} '{folder}'{problem}\n" == err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()  # neither folder was made
    assert blocker.read_text() == "mine\n"


@pytest.mark.parametrize("value, problem", [
    ("{training: {max_steps: 10", "expected ',' or '}', but got '<stream end>' at line 1 column 26"),
    ("[a, b", "expected ',' or ']', but got '<stream end>' at line 1 column 6"),
])
def test_an_unclosed_config_value_is_named_with_its_key(capsys, value, problem):
    err = cli_error(capsys, ["plan", "--configfile", str(REPO / "config/test.yaml"), "--config", f"baseline={value}"],
                    "--config baseline")
    assert err == f"tinylm plan: error: --config baseline: {value!r} is not valid YAML ({problem})\n"


def test_a_config_file_that_is_not_yaml_is_named_with_the_place(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("baseline:\n  training: {max_steps: 10\n")
    err = cli_error(capsys, ["plan", "--configfile", str(path)], path)
    assert "is not valid YAML (expected ',' or '}', but got '<stream end>' at line 3 column 1)" in err


def test_a_failed_system_call_names_the_file_at_fault(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError) as info:
        (blocker / "sub").mkdir(parents=True)
    assert os_error_text(info.value) == f"'{blocker / 'sub'}': '{blocker}' is a file, not a folder"
    with pytest.raises(OSError) as info:
        blocker.mkdir()
    assert os_error_text(info.value) == f"'{blocker}' is a file, not a folder"
    with pytest.raises(OSError) as info:
        (tmp_path / "missing" / "x.json").read_text()
    assert os_error_text(info.value) == f"'{tmp_path / 'missing' / 'x.json'}': no such file or directory"
    assert os_error_text(FileExistsError("checkpoint directory 'c' is in use by pid 7")) == \
        "checkpoint directory 'c' is in use by pid 7"
