"""The GPU check's CPU mode: every section of benchmarks/gpu_check.sh runs and passes on the CPU, so
that a GPU's first run meets no bug a CPU could have shown."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"cuda_tests", "throughput", "bf16_compile_vs_fp32", "max_batch", "ddp_2_processes", "trainer_throughput"}


@pytest.mark.slow
def test_every_section_of_the_gpu_check_passes_in_its_cpu_mode(tmp_path):
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), "--device", "cpu", "--quick"],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert set(sections) == SECTIONS
    assert {name: record["status"] for name, record in sections.items()} == dict.fromkeys(SECTIONS, "ok")
    assert sections["bf16_compile_vs_fp32"]["compile_time_s"] > 0
    assert sections["max_batch"]["largest_batch"] >= 1
    assert "| trainer_throughput | ok |" in (tmp_path / "gpu_check.md").read_text()


def test_a_section_that_would_not_fit_the_time_limit_is_skipped_with_its_reason(tmp_path):
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path), "--device", "cpu", "--quick",
                             "--time-limit", "1"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr[-3000:]
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert {record["status"] for record in sections.values()} == {"skipped"}
    assert "time limit" in sections["throughput"]["reason"]
