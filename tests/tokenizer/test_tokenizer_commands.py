"""`tinylm tokenize` and `tinylm tokenizer-report`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinylm.cli import main
from tinylm.tokenizer import Tokenizer
from tinylm.tokenizer.dataset import token_dtype, tokenize_file
from tinylm.tokenizer.report import PILE_BYTES, sample_documents
from tinylm.tokenizer.training import compiled_learn_merges

EOT = "<|endoftext|>"
STORY = "Once upon a time, a little dog named Max found a red ball. He played all day. 😀\n"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"{STORY * (i % 3 + 1)}{EOT}\n" for i in range(200)), encoding="utf-8")
    assert main(["train-bpe", "--input", str(corpus), "--vocab-size", "400", "--special-token", EOT,
                 "--out-dir", str(root / "tok"), "--no-progress"]) == 0
    return root / "tok"


def test_tokenize_equals_encode_for_any_workers_and_chunks(tokenizer_dir, tmp_path):
    text = "".join(f"story {i}: {STORY * (i % 4)}{EOT}{EOT if i % 7 == 0 else ''}" for i in range(300))
    source = tmp_path / "in.txt"
    source.write_text(text, encoding="utf-8")
    expected = Tokenizer.from_dir(tokenizer_dir).encode(text)
    for workers, chunk_bytes in ((1, 10**9), (2, 500), (3, 64)):
        out = tmp_path / f"out_{workers}.npy"
        result = tokenize_file(tokenizer_dir, source, out, workers=workers, chunk_bytes=chunk_bytes)
        array = np.load(out)
        assert array.dtype == np.uint16 and array.tolist() == expected
        assert result["tokens"] == len(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out_1.npy", "out_2.npy", "out_3.npy"]


def test_tokenize_streams_a_file_without_special_tokens(tokenizer_dir, tmp_path):
    # No special token means no safe cut: one chunk, read and encoded as a stream of blocks.
    trained = Tokenizer.from_dir(tokenizer_dir)
    Tokenizer(trained.vocab, trained.merges).save(tmp_path / "plain")
    text = "".join(f"{i} {STORY}  \n\n" for i in range(3000))  # ~300 kB, many stream blocks
    source = tmp_path / "in.txt"
    source.write_text(text, encoding="utf-8")
    tokenize_file(tmp_path / "plain", source, tmp_path / "ids.npy", workers=2, chunk_bytes=1000)
    assert np.load(tmp_path / "ids.npy").tolist() == Tokenizer.from_dir(tmp_path / "plain").encode(text)


def test_tokenize_removes_parts_left_by_a_killed_run(tokenizer_dir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text(STORY * 20, encoding="utf-8")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    stale = tmp_path / f".ids.npy.parts-{dead.pid}"
    stale.mkdir()
    (stale / "000000.bin").write_bytes(b"\0\0")
    tokenize_file(tokenizer_dir, source, tmp_path / "ids.npy", workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.npy", "in.txt"]


def test_tokenize_cli(tokenizer_dir, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text(STORY * 50, encoding="utf-8")
    out = tmp_path / "sub" / "ids.npy"
    assert main(["tokenize", "--tokenizer-dir", str(tokenizer_dir), "--input", str(source), "--output", str(out),
                 "--workers", "2", "--dtype", "uint32", "--no-progress"]) == 0
    array = np.load(out, mmap_mode="r")
    assert array.dtype == np.uint32
    assert Tokenizer.from_dir(tokenizer_dir).decode(array.tolist()) == STORY * 50
    assert "tokens" in capsys.readouterr().out


def test_dtype_choice():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    with pytest.raises(ValueError, match="does not fit in uint16"):
        token_dtype(70000, "uint16")


def test_tokenize_bad_input_writes_nothing(tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "ids.npy"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text " * 100 + b"\x80" + f"{EOT} more".encode())
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    cases = [(bad, "byte offset 1000"), (empty, "empty"), (tmp_path / "missing.txt", "missing.txt")]
    for source, message in cases:
        assert main(["tokenize", "--tokenizer-dir", str(tokenizer_dir), "--input", str(source),
                     "--output", str(out), "--workers", "2", "--chunk-mb", "0.0001", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "empty.txt"]


def test_tokenize_refuses_a_vocabulary_too_large_for_uint16(tmp_path, capsys):
    vocab = {i: bytes([i]) for i in range(256)} | {256 + i: b"\x00" + i.to_bytes(3, "big") for i in range(70_000)}
    Tokenizer(vocab, []).save(tmp_path / "big")
    source = tmp_path / "in.txt"
    source.write_text("hello", encoding="utf-8")
    out = tmp_path / "ids.npy"
    assert main(["tokenize", "--tokenizer-dir", str(tmp_path / "big"), "--input", str(source),
                 "--output", str(out), "--dtype", "uint16", "--no-progress"]) == 2
    assert "does not fit in uint16" in capsys.readouterr().err and not out.exists()


def test_sample_documents_is_seeded_and_uniform_over_the_file(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("".join(f"document {i}\n{EOT}\n" for i in range(1000)), encoding="utf-8")
    first = sample_documents(path, 10, EOT, seed=0)
    assert first == sample_documents(path, 10, EOT, seed=0) != sample_documents(path, 10, EOT, seed=1)
    assert len(set(first)) == 10 and all(doc.startswith("document ") for doc in first)
    assert max(int(doc.split()[1]) for doc in first) > 100  # not just the first ten


def test_tokenizer_report(tokenizer_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{STORY} number {i}\n{EOT}\n" for i in range(50)), encoding="utf-8")
    out_json, out_md = tmp_path / "report.json", tmp_path / "report.md"
    assert main(["tokenizer-report", "--tokenizer", f"small={tokenizer_dir}", "--corpus", f"stories={corpus}",
                 "--corpus", f"again={corpus}", "--out-json", str(out_json), "--out-md", str(out_md),
                 "--throughput-mb", "0.01"]) == 0
    report = json.loads(out_json.read_text())
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    documents = sample_documents(corpus, 10, EOT, seed=0)
    expected_ratio = sum(len(d.encode()) for d in documents) / sum(len(tokenizer.encode(d)) for d in documents)
    rows = report["compression"]
    assert len(rows) == 2 and rows[0]["bytes_per_token"] == pytest.approx(expected_ratio)
    for row in report["throughput"]:
        assert row["pile_825gb_s"] == pytest.approx(PILE_BYTES / row["bytes_per_s"])
    summary = report["tokenizers"]["small"]
    stats = json.loads((tokenizer_dir / "stats.json").read_text())
    assert summary["training_time_s"] == stats["training_time_s"]
    assert summary["peak_memory_bytes"] == stats["peak_memory_bytes"]
    assert summary["vocab_size"] == len(tokenizer.vocab)
    assert report["settings"]["compiled_encoder"] == tokenizer.compiled
    assert stats["compiled_merge_loop"] == (compiled_learn_merges is not None)
    markdown = out_md.read_text()
    assert "| small |" in markdown and "825 GB" in markdown
    assert ("compiled encoder" if tokenizer.compiled else "pure-Python encoder") in markdown
    assert main(["tokenizer-report", "--tokenizer", "bad", "--corpus", f"c={corpus}",
                 "--out-json", str(tmp_path / "x.json"), "--out-md", str(tmp_path / "x.md")]) == 2
    assert "NAME=PATH" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
