"""The workflow against Snakemake itself: its linter."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("snakemake", reason="the workflow tests need snakemake")

REPO = Path(__file__).resolve().parents[1]
# Software comes from the lock files (requirements/*.txt, installed by `make run`), not from a
# conda environment or container per rule: the one lint the workflow does not follow.
ACCEPTED_LINTS = {"Specify a conda environment or container for each rule."}


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("configfile", ["config/test.yaml", "config/config.yaml"])
def test_snakemake_lint_finds_nothing_but_the_software_environments(configfile):
    result = snakemake("--lint", "--configfile", configfile)
    output = result.stdout + result.stderr
    titles = set(re.findall(r"^    \* (.+?):?$", output, flags=re.M))
    assert "Lints for" in output or "Congratulations" in output, output[-3000:]
    assert titles <= ACCEPTED_LINTS, "\n".join(sorted(titles - ACCEPTED_LINTS)) + "\n\n" + output[-6000:]

