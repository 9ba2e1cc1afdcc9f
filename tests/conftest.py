"""Shared test fixtures.

Tests that need the real text samples look for `../shared/data` beside the checkout (or the
directory named by TINYLM_SHARED_DATA) and skip with a reason when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TINYLM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The directory of real samples (tinystories_sample/, owt_sample/, gpt2/), or skip."""
    if not (SHARED_DATA / "tinystories_sample" / "train.txt").is_file():
        pytest.skip(f"real text samples not found at {SHARED_DATA} (set TINYLM_SHARED_DATA)")
    return SHARED_DATA
