"""Each config's results folder (`results_dir`): results/ for config/config.yaml, results/<name>/ for
any other file, or the folder a config names; and `make run` logging and reporting there.
tests/pipeline/test_pipeline.py runs two configs in one working directory."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tinylm.pipeline.config import parse_overrides, resolve_config
from tinylm.pipeline.paths import TREE, results_dir_for

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("files, expected", [
    (["config/config.yaml"], "results"),
    ([REPO / "config" / "config.yaml"], "results"),
    (["config/test.yaml"], "results/test"),
    (["config/reference.yaml"], "results/reference"),
    (["config/config.yaml", "config/official-corpora.yaml"], "results/official-corpora"),
    (["config/reference.yaml", "config/official-corpora.yaml"], "results/reference+official-corpora"),
    (["/elsewhere/config.yaml"], "results/config"),  # a copy of the default elsewhere is another config
    (["/elsewhere/config/config.yaml"], "results"),
])
def test_results_dir_is_named_after_the_config_files(files, expected):
    assert results_dir_for(files) == expected


def test_resolved_config_holds_its_results_dir(tmp_path):
    assert resolve_config([REPO / "config" / "config.yaml"])["results_dir"] == "results"
    assert resolve_config([REPO / "config" / "test.yaml"])["results_dir"] == "results/test"
    assert resolve_config([REPO / "config" / "test.yaml"], {"results_dir": "/scratch/a"})["results_dir"] == "/scratch/a"
    named = yaml.safe_load((REPO / "config" / "test.yaml").read_text()) | {"results_dir": "results/mine"}
    (tmp_path / "named.yaml").write_text(yaml.safe_dump(named))
    assert resolve_config([tmp_path / "named.yaml"])["results_dir"] == "results/mine"


@pytest.mark.parametrize("results_dir, error", [
    ("results/runs", "a folder of the default config's results"),
    ("results/test/", "results_dir"),
    ("results/../x", "results_dir"),
    ("my results", "results_dir"),
])
def test_a_results_dir_that_would_mix_trees_is_an_error(results_dir, error):
    with pytest.raises(ValueError, match=error):
        resolve_config([REPO / "config" / "test.yaml"], {"results_dir": results_dir})


def test_no_config_is_named_after_a_folder_of_the_results_tree(tmp_path):
    config = tmp_path / "runs.yaml"
    shutil.copy(REPO / "config" / "test.yaml", config)
    with pytest.raises(ValueError, match="results/runs is a folder"):
        resolve_config([config])
    shipped = {results_dir_for([path]).removeprefix("results/") for path in (REPO / "config").glob("*.yaml")}
    assert not shipped & set(TREE)


def paths_command(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "tinylm.pipeline.paths", *args], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_paths_command_reads_snakemakes_arguments():
    """`make run` passes it SNAKEMAKE_ARGS and then CONFIG: targets and other options are skipped."""
    assert paths_command("--cores", "all") == "results"
    assert paths_command("--cores", "all", "lr_sweep", "--configfile", "config/test.yaml") == "results/test"
    assert paths_command("-n", "--config", "results_dir=results/try", "mirror=/m", "--configfile",
                         "config/test.yaml") == "results/try"
    assert paths_command("--configfile", "config/config.yaml", "config/official-corpora.yaml") == \
        "results/official-corpora"
    overrides = parse_overrides(["results_dir=results/try"])
    assert resolve_config([REPO / "config" / "test.yaml"], overrides)["results_dir"] == "results/try"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
@pytest.mark.parametrize("config, results", [("config/config.yaml", "results"), ("config/test.yaml", "results/test"),
                                             ("config/reference.yaml", "results/reference")])
def test_make_run_logs_and_reports_in_the_configs_folder(tmp_path, config, results):
    """`make run`'s recipe, with a stand-in venv: its python answers tinylm.pipeline.paths for real and
    records the quiet runner's arguments instead of running Snakemake."""
    venv, recorded = tmp_path / "venv", tmp_path / "quiet-args"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nif [ "$2" = tinylm.pipeline.paths ]; then exec {sys.executable} "$@"; fi\n'
                      f'printf "%s\\n" "$@" > {recorded}\n')
    python.chmod(0o755)
    future = time.time() + 3600
    for stamp in (python, venv / ".run-deps"):
        stamp.touch()
        os.utime(stamp, (future, future))
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(["make", "-s", "-C", str(REPO), f"VENV={venv}", f"CONFIG={config}", "run"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    args = recorded.read_text().splitlines()
    assert args[:2] == ["-m", "tinylm.pipeline.quiet"]
    assert args[args.index("--log") + 1] == f"{results}/logs/snakemake.log"
    assert args[args.index("--report") + 1] == f"{results}/report/README.md"
    assert args[-2:] == ["--configfile", config]
