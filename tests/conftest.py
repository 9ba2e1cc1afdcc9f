"""Shared test fixtures.

Tests that need real text read the samples embedded in the repository (`data/`, gzip-compressed;
see data/SOURCES.md), so a fresh clone runs every test with nothing beside it.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = REPO_ROOT / "data"
SAMPLES = ("tinystories/train.txt", "tinystories/valid.txt", "owt/train.txt", "owt/valid.txt",
           "gpt2/encoder.json", "gpt2/vocab.bpe")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """A folder holding the embedded samples decompressed, under the same names without `.gz`:
    tinystories/{train,valid}.txt, owt/{train,valid}.txt, gpt2/{encoder.json,vocab.bpe}."""
    folder = tmp_path_factory.mktemp("sample_data")
    for name in SAMPLES:
        source = DATA / f"{name}.gz"
        if not source.is_file():
            raise FileNotFoundError(f"{source}: embedded sample missing from the checkout")
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(source, "rb") as src, open(folder / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder
