"""The Snakemake pipeline through its command line, in temporary working directories.

One full run of config/test.yaml (module fixture, on a copy of the workflow and package so a test
may edit code) serves the output, rerun and change tests; the other tests are dry runs. Expected
job counts are worked out here from the config files themselves.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tinylm.pipeline.config import parse_overrides, resolve_config
from tinylm.pipeline.plan import build_plan

pytest.importorskip("snakemake", reason="the pipeline tests need snakemake")  # run as `python -m snakemake`

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ["tokenizer", "lr_sweep", "batch_size", "generate", "no_rmsnorm", "post_norm", "nope", "silu", "owt"]
PROVENANCE_KEYS = {"git_commit", "git_dirty", "tinylm_version", "torch_version", "python_version", "device_name",
                   "hostname", "started_at"}
RUN_FILES = ["metrics.jsonl", "summary.json", "config.json", "model.pt", "eval.json"]
# Each config's results folder (config/README.md): results/<its name>/, results/ for config/config.yaml.
TEST_RESULTS = "results/test"


def snakemake(workdir: Path, *args: str, configfile: str = "config/test.yaml", check: bool = True,
              repo: Path = REPO):
    """Run the workflow of `repo` (its Snakefile, rules and `tinylm` package) in `workdir`."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(repo / configfile), "--cores", "2", *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo / "src"), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run: rule -> number of jobs."""
    table = output[output.index("Job stats:"):].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def refinements(results: Path) -> dict[str, tuple[tuple[float, ...], bool]]:
    """What refinement added to each rate sweep of a finished run: its rounds' decisions, in order."""
    found = {}
    for sweep in sorted((results / "refine").iterdir()):
        rounds = sorted(sweep.glob("round-*.json"), key=lambda path: int(path.stem.split("-")[1]))
        rates = [json.loads(path.read_text())["next"] for path in rounds]
        found[sweep.name] = (tuple(rate for rate in rates if rate is not None), True)
    return found


def refinement_runs(results: Path, config: dict, largest_batch: int | None = None) -> set[str]:
    """The runs refinement added to the plan of a finished run."""
    plan = build_plan(config, largest_batch, refinements(results))
    return {sweep.runs[rate] for sweep in plan.rate_sweeps.values() for rate in sweep.refined}


def scheduled(output: str, rule: str) -> list[str]:
    """The `run` wildcard of every job of `rule` in a dry run printed with -p."""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", output)
    return sorted(re.search(r"wildcards: run=(\S+)", b)[1] for b in blocks
                  if re.match(rf"(?:local)?rule {rule}:", b.strip()))


def static_run_count(configfile: str) -> int:
    """Runs known before the batch-size probe: the baseline, lr sweep rates other than the
    baseline's, the no-RMSNorm rates, and one run each for post-norm, NoPE, SiLU and OpenWebText."""
    cfg = yaml.safe_load((REPO / configfile).read_text())
    base_lr = float(cfg["baseline"]["optimizer"]["lr"])
    sweep = {float(lr) for lr in cfg["experiments"]["lr_sweep"]["sweep"]["optimizer.lr"]}
    no_rmsnorm = cfg["experiments"]["no_rmsnorm"]["sweep"]["optimizer.lr"]
    return 1 + len(sweep - {base_lr}) + len(no_rmsnorm) + 4


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/reference.yaml"])
def test_dry_run_lists_the_expected_jobs(tmp_path, configfile):
    counts = job_counts(snakemake(tmp_path, "--dry-run", configfile=configfile).stdout)
    runs = static_run_count(configfile)
    grid = 1  # the TinyStories sampling-settings grid beside the main samples of TinyStories and OWT
    expected = {"download": 4, "train_bpe": 2, "tokenize": 4, "tokenizer_report": 1, "max_batch": 1,
                "write_run_config": runs, "train": runs, "evaluate": runs, "generate_text": 2 + grid}
    assert {rule: counts.get(rule) for rule in expected} == expected
    # The batch-size runs are added once the probe has run (a checkpoint), so none are listed yet.


def test_reference_dry_run_downloads_whole_files(tmp_path):
    """The reference config alone: nothing of config/config.yaml (byte caps, sizes) leaks into it."""
    result = snakemake(tmp_path, "--dry-run", "-p", configfile="config/reference.yaml")
    downloads = [line for line in result.stdout.splitlines() if line.startswith("Shell command: tinylm download")]
    assert len(downloads) == 4 and not any("--max-bytes" in line for line in downloads)
    assert all("huggingface.co" in line for line in downloads)


@pytest.mark.parametrize("override, key", [
    ("typo_key=1", "typo_key"),
    ("baseline={model: {d_modle: 8}}", "d_modle"),
    ("experiments={nope: {overrides: {optimizer.lrr: 1.0e-3}}}", "optimizer.lrr"),
])
def test_config_typo_fails_naming_the_key(tmp_path, override, key):
    result = snakemake(tmp_path, "--dry-run", "--config", override, check=False)
    assert result.returncode != 0
    assert key in result.stdout + result.stderr


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """(workdir, workflow copy) after one complete run of the test config (on the embedded samples,
    copied with the workflow: the config's relative sources are relative to the Snakefile)."""
    copy = tmp_path_factory.mktemp("repo")
    for name in ("Snakefile", "workflow", "config", "profiles", "src", "data"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, copy / name)
    workdir = tmp_path_factory.mktemp("pipeline")
    snakemake(workdir, repo=copy)
    return workdir, copy


@pytest.mark.slow
def test_full_run_produces_every_section(full_run):
    workdir, _ = full_run
    results = workdir / TEST_RESULTS
    for section in SECTIONS:
        page = results / "report" / section / "section.md"
        assert page.is_file() and page.stat().st_size > 0, page
    assert (results / "report" / "README.md").stat().st_size > 0
    probe = json.loads((results / "max_batch" / "batch_size.json").read_text())
    batches = sorted({b for b in (1, 4) if b <= probe["largest_batch"]} | {probe["largest_batch"]})
    # Names from config/test.yaml. The lr sweep at the baseline's rate (3e-3) is the baseline itself,
    # and so is batch 4 with the 512-token budget (the baseline's 8 steps x 4 sequences x 16 tokens).
    expected = {"baseline", "lr_sweep-lr=10", "no_rmsnorm-lr=3e-3", "no_rmsnorm-lr=1e-4", "post_norm", "nope",
                "silu", "owt"} | {f"batch_size-batch={b}" for b in batches if b != 4}
    # The test config refines each of its two rate sweeps by one round: one run each, at a rate its
    # round decided from the grid's results.
    refined = refinement_runs(results, resolve_config([REPO / "config/test.yaml"]))
    assert len(refined) == 2 and {run.split("-lr=")[0] for run in refined} == {"lr_sweep", "no_rmsnorm"}
    expected |= refined
    assert {p.name for p in (results / "runs").iterdir()} == expected
    for section in ("lr_sweep", "no_rmsnorm"):  # a section of one sweep states its edge
        edge = (results / "report" / section / "edge_of_stability.csv").read_text().splitlines()
        assert {"bracket_ratio", "lr_sensitivity"} <= set(edge[0].split(",")) and len(edge) == 2
    for run in expected:
        for name in RUN_FILES:
            assert (results / "runs" / run / name).stat().st_size > 0, (run, name)
        config = json.loads((results / "runs" / run / "config.json").read_text())
        assert config["name"] == run
    assert json.loads((results / "runs" / "nope" / "config.json").read_text())["model"]["position"] == "none"
    for run in expected:  # where, with what code and libraries, each run was trained
        provenance = json.loads((results / "runs" / run / "summary.json").read_text())["provenance"]
        assert set(provenance) >= PROVENANCE_KEYS, (run, PROVENANCE_KEYS - set(provenance))
    for group in ("tinystories", "owt"):  # the sampled models, exported for transformers
        exported = json.loads((results / "export" / group / "config.json").read_text())
        assert exported["architectures"] == ["LlamaForCausalLM"]
    table = (results / "report" / "runs.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in table[1:]) == sorted(expected)
    for path in ("generate/tinystories/T=0.8_p=0.95.json", "generate/tinystories/grid.json",
                 "generate/owt/T=0.8_p=0.95.json", "tokenizers/report.json"):
        assert (results / path).stat().st_size > 0, path


@pytest.mark.slow
def test_immediate_rerun_schedules_nothing(full_run):
    workdir, copy = full_run
    result = snakemake(workdir, "--dry-run", repo=copy)
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_new_mirror_or_retry_count_refetches_nothing(full_run, tmp_path):
    """Where a download comes from is no part of its content (data.smk)."""
    workdir, copy = full_run
    result = snakemake(workdir, "--dry-run", "--config", "download={retries: 2}", f"mirror={tmp_path}", repo=copy)
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_second_config_in_the_same_directory_loses_nothing(full_run, tmp_path):
    """Another config run where the test config ran writes its own folder: every file of the test
    config's results stays byte for byte, and neither config has anything left to do. The second
    config is the test config with longer runs, in a file config/config.yaml (the default's name), so
    its results are results/ itself, around the first's results/test/."""
    workdir = tmp_path / "work"
    shutil.copytree(full_run[0], workdir, symlinks=True)  # file times kept: the same up-to-date outputs
    copy = full_run[1]
    before = {path: path.read_bytes() for path in (workdir / "results").rglob("*") if path.is_file()}
    second = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    second["baseline"]["training"]["max_steps"] = 12
    configfile = tmp_path / "config" / "config.yaml"
    configfile.parent.mkdir()
    configfile.write_text(yaml.safe_dump(second))

    snakemake(workdir, configfile=str(configfile), repo=copy)
    changed = [str(path.relative_to(workdir)) for path, data in before.items()
               if not path.is_file() or path.read_bytes() != data]
    assert not changed, changed
    assert json.loads((workdir / "results" / "runs" / "baseline" / "summary.json").read_text())["steps"] == 12
    assert (workdir / "results" / "report" / "README.md").stat().st_size > 0
    for config in ("config/test.yaml", str(configfile)):
        result = snakemake(workdir, "--dry-run", configfile=config, repo=copy)
        assert "Nothing to be done" in result.stdout + result.stderr, (config, result.stdout[-3000:])


@pytest.mark.slow
def test_a_second_seed_trains_every_runs_replica_and_reports_the_spread(full_run, tmp_path):
    """`--config "seeds=[0, 1]"` where the test config ran: the first seed's runs are reused, each gets
    a replica at seed 1, and a variant section's table has the mean, std and seed count per run."""
    workdir = tmp_path / "work"
    shutil.copytree(full_run[0], workdir, symlinks=True)  # file times kept: the same up-to-date outputs
    copy, runs = full_run[1], workdir / TEST_RESULTS / "runs"
    first = sorted(p.name for p in runs.iterdir())
    dry = snakemake(workdir, "--dry-run", "-p", "--config", "seeds=[0, 1]", repo=copy).stdout
    assert scheduled(dry, "train") == sorted(f"{run}-seed=1" for run in first)  # nothing of seed 0 retrains

    snakemake(workdir, "--config", "seeds=[0, 1]", repo=copy)
    assert sorted(p.name for p in runs.iterdir()) == sorted([*first, *(f"{run}-seed=1" for run in first)])
    for run in first:
        assert json.loads((runs / f"{run}-seed=1" / "config.json").read_text())["training"]["seed"] == 1
    losses = {run: json.loads((runs / run / "summary.json").read_text())["final_val_loss"]
              for run in ("baseline", "baseline-seed=1", "nope", "nope-seed=1")}
    table = pd.read_csv(workdir / TEST_RESULTS / "report" / "nope" / "final_losses.csv").set_index("run")
    differences = [losses["nope"] - losses["baseline"], losses["nope-seed=1"] - losses["baseline-seed=1"]]
    assert table.loc["NoPE", "val_vs_baseline_mean"] == pytest.approx(sum(differences) / 2)
    assert table.loc["NoPE", "val_vs_baseline_std"] == pytest.approx(abs(differences[0] - differences[1]) / 2 ** 0.5)
    extremes = table.loc["NoPE", ["val_vs_baseline_min", "val_vs_baseline_max"]].tolist()
    assert extremes == pytest.approx(sorted(differences))
    assert table.loc["NoPE", "final_val_loss_mean"] == pytest.approx((losses["nope"] + losses["nope-seed=1"]) / 2)
    assert list(table["seeds"]) == [2, 2]
    text = (workdir / TEST_RESULTS / "report" / "nope" / "section.md").read_text()
    assert re.search(r"NoPE is (worse than|better than|equal to) the baseline at (every seed|1 of 2 seeds): "
                     r"[+-]\d\.\d{3} ± \d\.\d{3} over 2 seeds\.", text)
    overview = pd.read_csv(workdir / TEST_RESULTS / "report" / "runs.csv")
    assert sorted(overview["run"]) == sorted(p.name for p in runs.iterdir())


def dry_run_with(full_run, change: str) -> tuple[str, dict[str, int]]:
    """The printed dry run of the finished test pipeline with one `--config` change."""
    workdir, copy = full_run
    result = snakemake(workdir, "--dry-run", "-p", "--config", change, repo=copy)
    return result.stdout, job_counts(result.stdout)


@pytest.mark.slow
def test_changing_one_runs_lr_retrains_only_that_run(full_run):
    output, counts = dry_run_with(full_run, "experiments={nope: {overrides: {optimizer.lr: 1.0e-3}}}")
    assert scheduled(output, "train") == ["nope"]
    assert counts["write_run_config"] == 1 and counts["evaluate"] == 1
    for upstream in ("download", "train_bpe", "tokenize", "max_batch", "generate_text", "tokenizer_report"):
        assert upstream not in counts


@pytest.mark.slow
def test_changing_the_vocabulary_retrains_everything_downstream(full_run):
    output, counts = dry_run_with(full_run, "tokenizers={tinystories: {vocab_size: 301}}")
    results = full_run[0] / TEST_RESULTS
    runs = [p.name for p in (results / "runs").iterdir()]
    # Batch-size runs are scheduled once the re-run probe (a checkpoint) reports the largest batch, and
    # the runs refinement added once its re-run rounds (checkpoints) decide their rates again.
    later = refinement_runs(results, resolve_config([REPO / "config/test.yaml"]))
    assert scheduled(output, "train") == sorted(r for r in runs if r != "owt" and not r.startswith("batch_size")
                                                and r not in later)
    assert counts["max_batch"] == 1
    assert counts["train_bpe"] == 1 and counts["tokenize"] == 2 and "download" not in counts


@pytest.mark.slow
def test_editing_plotting_code_redraws_without_retraining(full_run):
    workdir, copy = full_run
    figures = copy / "src" / "tinylm" / "report" / "figures.py"
    code = figures.read_text()
    figures.write_text(code + "# an edit\n")  # Snakemake checksums small files: a bare touch is no edit
    try:
        result = snakemake(workdir, "--dry-run", repo=copy)
    finally:
        figures.write_text(code)
    counts = job_counts(result.stdout)
    assert {f"report_{section}" for section in SECTIONS} <= set(counts)
    assert set(counts) - {f"report_{section}" for section in SECTIONS} <= {"report_index", "all"} | set(SECTIONS)


# Size and device overrides only: the reference plan's DAG (every rule, the Slurm-free path) on CPU.
REFERENCE_ON_CPU = [
    "threads={tokenizer: 1, train: 1}",
    "resources={train: {gpu: 0, runtime: 10, mem_mb: 1000}}",
    "tokenizers={tinystories: {vocab_size: 300}, owt: {vocab_size: 350}}",
    "baseline={model: {context_length: 16, d_model: 16, num_layers: 1, num_heads: 2, d_ff: 32},"
    " optimizer: {warmup_steps: 2}, training: {batch_size: 4, max_steps: 6, eval_interval: 3, eval_batches: 1,"
    " final_eval_tokens: 2000,"
    " log_interval: 2, checkpoint_interval: 3, device: cpu, precision: fp32, compile: false}}",
    "experiments={batch_size: {batch_sizes: [1, 4], max_tokens: 384, max_batch: 8, cpu_memory_budget_mb: 4096,"
    " resources: {runtime: 10}}, lr_sweep: {max_refinements: 1}, no_rmsnorm: {max_refinements: 1}}",
    "evaluate={max_tokens: 2000}",
    "generate={max_new_tokens: 8, seeds: [0]}",
]
OFFICIAL_NAMES = {("tinystories", "train"): "TinyStoriesV2-GPT4-train.txt",
                  ("tinystories", "valid"): "TinyStoriesV2-GPT4-valid.txt",
                  ("owt", "train"): "owt_train.txt", ("owt", "valid"): "owt_valid.txt"}


@pytest.mark.slow
def test_reference_dag_runs_on_cpu_with_size_overrides(tmp_path, sample_data):
    """Every rule of the reference plan completes, its corpora read whole from a mirror folder."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for (corpus, split), name in OFFICIAL_NAMES.items():
        text = (sample_data / corpus / f"{split}.txt").read_text()
        cut = text.index("<|endoftext|>", 60_000) + len("<|endoftext|>")
        (mirror / name).write_text(text[:cut] + "\n")
    workdir = tmp_path / "work"
    overrides = [*REFERENCE_ON_CPU, f"mirror={mirror}"]
    snakemake(workdir, "--config", *overrides, configfile="config/reference.yaml")
    results = workdir / "results" / "reference"
    config = resolve_config([REPO / "config/reference.yaml"], parse_overrides(overrides))
    probe = json.loads((results / "max_batch" / "batch_size.json").read_text())
    plan = build_plan(config, largest_batch=probe["largest_batch"], refinements=refinements(results))
    for name in plan.sections:
        assert (results / "report" / name / "section.md").stat().st_size > 0, name
    trained = {run for section in plan.sections.values() for run in section.runs}
    assert {p.name for p in (results / "runs").iterdir()} == trained
    for run in trained:
        assert json.loads((results / "runs" / run / "summary.json").read_text())["steps"] > 0, run
    for corpus, split in OFFICIAL_NAMES:  # whole files: no byte cap in the reference
        downloaded = (results / "downloads" / corpus / f"{split}.txt").read_text()
        assert downloaded == (mirror / OFFICIAL_NAMES[corpus, split]).read_text()
