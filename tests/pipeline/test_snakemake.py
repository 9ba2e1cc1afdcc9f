"""The workflow against Snakemake itself: its linter, and the semi-internal API the Snakefile uses.

The Snakefile replaces Snakemake's `config` with tinylm's resolution of the command line's config
files and `--config` overrides, read from `workflow.config_settings` (not a documented API). The
tests here fail, naming what changed, when a Snakemake release moves it: pyproject.toml's upper bound
on snakemake is the range these tests were run with.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("snakemake", reason="the workflow tests need snakemake")

REPO = Path(__file__).resolve().parents[2]
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


def test_the_workflow_config_settings_the_snakefile_reads_exist():
    """`workflow.config_settings.configfiles` is every --configfile as an absolute path, in order;
    `.config` the --config overrides alone, not merged with the files."""
    import snakemake.api  # noqa: F401  (snakemake.workflow imports it first)
    from snakemake import __version__
    from snakemake.settings.types import ConfigSettings
    from snakemake.workflow import Workflow

    where = f"snakemake {__version__}: the Snakefile's config resolution needs updating"
    assert "config_settings" in {f.name for f in dataclasses.fields(Workflow)}, f"{where} (Workflow.config_settings)"
    assert {"config", "configfiles"} <= {f.name for f in dataclasses.fields(ConfigSettings)}, where


def test_config_settings_hold_the_files_and_the_overrides_apart(tmp_path, monkeypatch):
    from snakemake.settings.types import ConfigSettings

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.yaml").write_text("x: 1\nnested: {a: 1}\n")
    (tmp_path / "b.yaml").write_text("nested: {b: 2}\n")
    settings = ConfigSettings(configfiles=[Path("a.yaml"), Path("b.yaml")], config={"y": 3})
    assert [Path(p) for p in settings.configfiles] == [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    assert dict(settings.config) == {"y": 3}


def test_a_dry_run_resolves_exactly_the_named_file_and_overrides(tmp_path):
    """Through the command line: the named file alone (none of config/config.yaml underneath), the
    --config override over it."""
    lean = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    del lean["corpora"]["tinystories"]["valid"]["max_bytes"]  # config/config.yaml caps it
    configfile = tmp_path / "lean.yaml"
    configfile.write_text(yaml.safe_dump(lean))
    result = snakemake("--dry-run", "-p", "--cores", "1", "--directory", str(tmp_path / "work"),
                       "--configfile", str(configfile), "--config", "tokenizers={owt: {vocab_size: 351}}")
    assert result.returncode == 0, result.stderr[-3000:]
    commands = [line.removeprefix("Shell command: ") for line in result.stdout.splitlines()
                if line.startswith("Shell command: tinylm ")]
    downloads = {re.search(r"--out \S+/downloads/(\S+)\.txt", c)[1]: c for c in commands
                 if c.startswith("tinylm download")}
    assert all(" --out results/lean/downloads/" in c for c in downloads.values())  # named after the file
    assert "--max-bytes" not in downloads["tinystories/valid"]
    assert "--max-bytes 300000" in downloads["tinystories/train"]
    vocab = {re.search(r"--out-dir \S+/tokenizers/(\w+)", c)[1]: re.search(r"--vocab-size (\d+)", c)[1]
             for c in commands if c.startswith("tinylm train-bpe")}
    assert vocab == {"tinystories": "300", "owt": "351"}


def test_without_a_configfile_the_default_config_is_read(tmp_path):
    result = snakemake("--dry-run", "-p", "--cores", "1", "--directory", str(tmp_path))
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cap = default["corpora"]["tinystories"]["valid"]["max_bytes"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(rf"tinylm download \S+/tinystories/valid\.txt\.gz --max-bytes {cap} ", result.stdout)
