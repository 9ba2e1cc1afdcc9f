"""The experiment plan (tinylm.pipeline): config resolution, the planner, and `tinylm plan`."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from small_plan import small_config

from tinylm.pipeline.config import (
    SCHEMA,
    deep_merge,
    parse_overrides,
    read_config_file,
    resolve_config,
    validate_config,
)
from tinylm.pipeline.naming import config_changes
from tinylm.pipeline.paths import results_dir_for
from tinylm.pipeline.plan import BASELINE_RUN, build_plan
from tinylm.pipeline.plan_command import plan_table

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "config").glob("*.yaml"))
# Files that amend another, named after it on the command line (as their header says).
AMENDS = {"official-corpora.yaml": ["config.yaml"]}


# ---- configs stand alone ---------------------------------------------------------------------

def _schema_default(schema: dict, root: dict, path: list[str]):
    """The schema's default for the key at `path` (following $ref and additionalProperties)."""
    node = schema
    for key in path:
        while "$ref" in node:
            node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        props = node.get("properties", {})
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            raise KeyError(path)
    while "$ref" in node and "default" not in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node["default"]


def _leaves(data, path=()):
    if isinstance(data, dict) and data:
        for key, value in data.items():
            yield from _leaves(value, (*path, key))
    else:
        yield list(path), data


def _get(data, path):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return KeyError
        data = data[key]
    return data


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda p: p.name)
def test_every_config_resolves_to_the_file_plus_schema_defaults(configfile):
    files = [REPO / "config" / name for name in AMENDS.get(configfile.name, [])] + [configfile]
    written = {}
    for path in files:
        written = deep_merge(written, read_config_file(path))
    resolved = resolve_config(files)
    schema = yaml.safe_load(SCHEMA.read_text())
    for path, value in _leaves(resolved):
        if path == ["results_dir"] and "results_dir" not in written:  # named after the files
            assert value == results_dir_for(files)
            continue
        in_file = _get(written, path)
        if in_file is not KeyError:
            assert in_file == value, path
            continue
        # Not in the file: the schema's default, of the missing key's object or of a key inside it.
        missing = next(d for d in range(1, len(path) + 1) if _get(written, path[:d]) is KeyError)
        defaults = (_get(_schema_default(schema, schema, path[:d]), path[d:]) for d in range(missing, len(path) + 1))
        assert next(d for d in defaults if d is not KeyError) == value, path
    build_plan(resolved)  # and every shipped config plans


def test_the_reference_config_is_the_experiment_logs_scale():
    config = resolve_config([REPO / "config/reference.yaml"])
    for corpus in config["corpora"].values():
        for split in ("train", "valid"):
            assert corpus[split]["max_bytes"] is None and corpus[split]["source"].startswith("https://")
    plan = build_plan(config)
    base = plan.run(BASELINE_RUN).config
    assert (base.model.vocab_size, base.model.context_length, base.model.d_model, base.model.d_ff,
            base.model.num_layers, base.model.num_heads, base.model.rope_theta) == (10000, 256, 512, 1344, 4, 16, 1e4)
    assert (base.training.batch_size, base.total_steps) == (128, 10000)
    assert plan.run(BASELINE_RUN).tokens == 327_680_000
    lr_runs = plan.sections["lr_sweep"].runs
    assert sorted(plan.run(r).config.optimizer.lr for r in lr_runs) == [1e-3, 3e-3, 5e-3, 1e-2]
    assert plan.run("owt").config.model.vocab_size == 32000
    assert plan.run("silu").config.model.d_ff == 4 * 512


def test_an_unnamed_file_is_never_read(tmp_path):
    """The config is the named file alone: a key it leaves out is the schema's default, not the demo's."""
    lean = read_config_file(REPO / "config/test.yaml")
    lean["corpora"]["tinystories"]["train"].pop("max_bytes")
    path = tmp_path / "lean.yaml"
    path.write_text(yaml.safe_dump(lean))
    resolved = resolve_config([path])
    assert resolved["corpora"]["tinystories"]["train"]["max_bytes"] is None
    assert resolved["download"] == {"cache_dir": "results/cache", "retries": 5}


def test_overrides_merge_key_by_key_and_typos_are_named():
    config = resolve_config([REPO / "config/test.yaml"], parse_overrides(["baseline={training: {max_steps: 3}}"]))
    assert config["baseline"]["training"]["max_steps"] == 3
    assert config["baseline"]["training"]["batch_size"] == 4  # untouched neighbours stay
    with pytest.raises(ValueError, match="typo_key"):
        resolve_config([REPO / "config/test.yaml"], {"typo_key": 1})
    with pytest.raises(ValueError, match="d_modle"):
        build_plan(resolve_config([REPO / "config/test.yaml"], {"baseline": {"model": {"d_modle": 8}}}))
    with pytest.raises(ValueError, match=r"experiments\.nope.*optimizer\.lrr"):
        build_plan(resolve_config([REPO / "config/test.yaml"],
                                  {"experiments": {"nope": {"overrides": {"optimizer.lrr": 1e-3}}}}))
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["no-equals-sign"])


def test_an_unclosed_override_is_named_and_other_text_stays_text():
    with pytest.raises(ValueError, match=r"^--config baseline: '\{training: \{max_steps: 10' is not valid YAML "
                                         r"\(expected ',' or '\}', but got '<stream end>' at line 1 column 26\)$"):
        parse_overrides(["baseline={training: {max_steps: 10"])
    # As the Snakefile gets it: Snakemake keeps a value it cannot read as YAML as text.
    with pytest.raises(ValueError, match=r"^--config baseline: '\{training: \{max_steps: 10' is not valid YAML"):
        resolve_config([REPO / "config/test.yaml"], {"baseline": "{training: {max_steps: 10"})
    assert parse_overrides(["mirror=a: b: c"]) == {"mirror": "a: b: c"}  # not YAML, not a mapping: text
    # Nested text reaches us only from a value Snakemake could read: it was quoted there, so it is text.
    assert parse_overrides(["baseline={data: {tokenizer: '[tok'}}"]) == {"baseline": {"data": {"tokenizer": "[tok"}}}


# ---- the planner -----------------------------------------------------------------------------

def test_identical_runs_are_one_run_named_first():
    plan = build_plan(small_config(again={"overrides": {"optimizer.lr": 3e-3}}))
    assert plan.sections["lr_sweep"].runs == {"lr_sweep-lr=1e-2": "lr=1e-2", BASELINE_RUN: "lr=3e-3"}
    assert plan.sections["again"].runs == {BASELINE_RUN: "lr=3e-3"}  # the same as the baseline: no new run
    assert "again" not in plan.runs


def test_a_sweep_value_baseline_stands_for_the_baselines_setting():
    plan = build_plan(small_config(no_norm={"overrides": {"model.norm": "none"},
                                            "sweep": {"optimizer.lr": ["baseline", 1e-4]}}))
    runs = plan.sections["no_norm"].runs
    assert runs == {"no_norm-lr=3e-3": "norm=none lr=3e-3", "no_norm-lr=1e-4": "norm=none lr=1e-4",
                    BASELINE_RUN: "baseline"}
    assert plan.run("no_norm-lr=3e-3").config.optimizer.lr == 3e-3
    assert plan.run("no_norm-lr=1e-4").changes == "norm=none, lr=1e-4"
    assert plan.sections["no_norm"].baseline == BASELINE_RUN


def test_batch_size_runs_share_one_token_budget():
    plan = build_plan(small_config(), largest_batch=16)
    section = plan.sections["batch_size"]
    assert not section.pending_probe
    # Sizes above the largest that fits are dropped, the largest is added; batch 8 is the baseline
    # (8 x 16 tokens x 100 steps = the 12,800-token budget).
    assert section.runs == {"batch_size-batch=2": "batch=2", BASELINE_RUN: "batch=8", "batch_size-batch=16": "batch=16"}
    for name in section.runs:
        run = plan.run(name).config
        assert run.total_steps == math.ceil(12800 / (run.training.batch_size * 16))
    # sqrt scaling of the learning rate, capped at max_lr; intervals fixed in tokens.
    assert plan.run("batch_size-batch=2").config.optimizer.lr == pytest.approx(3e-3 * 0.5)
    assert plan.run("batch_size-batch=16").config.optimizer.lr == pytest.approx(min(3e-3 * 2 ** 0.5, 1e-2))
    assert plan.run("batch_size-batch=2").config.training.eval_interval == 40


def test_before_the_probe_the_batch_section_is_pending_and_names_stay():
    before, after = build_plan(small_config()), build_plan(small_config(), largest_batch=16)
    assert before.sections["batch_size"].pending_probe
    assert list(before.sections["batch_size"].runs) == ["batch_size-batch=2", BASELINE_RUN, "batch_size-batch=32"]
    for name, run in before.runs.items():
        if run.section != "batch_size":
            assert after.run(name).config == run.config


def test_resources_per_experiment():
    config = small_config(big={"overrides": {"training.devices": 2}, "resources": {"gpu": 1, "runtime": 600}})
    config["resources"]["train"] = {"gpu": 1, "runtime": 60, "mem_mb": 4000}
    plan = build_plan(config)
    assert plan.run(BASELINE_RUN).resources == {"gpu": 1, "devices": 1, "runtime": 60, "mem_mb": 4000}
    assert plan.run("big").resources == {"gpu": 2, "devices": 2, "runtime": 600, "mem_mb": 4000}


def test_adding_an_ablation_is_one_config_entry():
    plan = build_plan(small_config(wide={"title": "Wider", "overrides": {"model.d_ff": 64}},
                                   web={"report": "corpus", "tokenizer": "web", "corpus": "web"}))
    names = list(plan.sections)
    assert names == ["tokenizer", "lr_sweep", "batch_size", "generate", "wide", "web"]
    wide = plan.sections["wide"]
    assert (wide.title, wide.kind, wide.baseline) == ("4. Wider", "variant", BASELINE_RUN)
    assert wide.description == "wide (d_ff=64) against the baseline."
    web = plan.sections["web"]
    assert (web.kind, web.generation.group, web.generation.runs) == ("corpus", "web", ("web",))
    assert plan.run("web").changes == "vocab_size=400, corpus=web, tokenizer=web"
    generate = plan.sections["generate"]
    assert set(generate.generation.runs) == {"lr_sweep-lr=1e-2", BASELINE_RUN}
    assert "grid" in generate.generation.settings


@pytest.mark.parametrize("change, key", [
    (lambda c: c["tokenizers"]["ts"].update(corpus="nowhere"), "tokenizers.ts.corpus"),
    (lambda c: c["tokenizer_report"].update(corpora=["ts", "nowhere"]), r"tokenizer_report.corpora\[1\]"),
    (lambda c: c["baseline"].update(tokenizer="nowhere"), "baseline.tokenizer"),
    (lambda c: c["experiments"].update(web={"tokenizer": "nowhere"}), "experiments.web.tokenizer"),
    (lambda c: c["experiments"].update(web={"corpus": "nowhere"}), "experiments.web.corpus"),
    (lambda c: c["experiments"].update(generate={}), "experiments.generate"),
    (lambda c: c["experiments"].update(web={"report": "corpus"}), "experiments.web.corpus"),
])
def test_references_between_entries_are_checked_naming_the_key(change, key):
    config = copy.deepcopy(small_config())
    change(config)
    with pytest.raises(ValueError, match=rf"^config {key}"):
        build_plan(validate_config(config))


def test_a_tokenizer_made_from_another_corpus_is_shown():
    plan = build_plan(small_config(mixed={"tokenizer": "web"}))
    assert plan.run("mixed").data_note == "tokenizer 'web' was trained on 'web'"
    assert "tokenizer 'web' was trained on 'web'" in plan_table(plan)
    assert plan.run(BASELINE_RUN).data_note == ""


def test_changes_leave_out_bookkeeping():
    plan = build_plan(small_config(), largest_batch=16)
    assert config_changes(plan.run("batch_size-batch=2").config, plan.run(BASELINE_RUN).config) == \
        "lr=1.5e-3, warmup_steps=16, batch=2, max_steps=400"


def test_each_further_seed_replicates_every_run_and_names_the_first_seeds_as_before():
    config = small_config(no_norm={"overrides": {"model.norm": "none"}, "sweep": {"optimizer.lr": ["baseline", 1e-4]}})
    refined = {"lr_sweep": ((5.5e-3,), True)}
    one = build_plan(config, largest_batch=16, refinements=refined)
    two = build_plan({**config, "seeds": [0, 1]}, largest_batch=16, refinements=refined)
    assert len(two.runs) == 2 * len(one.runs) and two.seeds == (0, 1)
    for name, run in one.runs.items():  # the first seed's runs: the same names and configs, so cached
        assert two.runs[name].config == run.config and two.runs[name].seed == 0 and not two.runs[name].replica_of
        replica = two.run(f"{name}-seed=1")
        assert replica.replica_of == name and replica.seed == 1 and replica.section == run.section
        assert replica.config == run.config.with_overrides({"name": replica.name, "training.seed": 1})
        assert two.at_seeds(name) == [name, replica.name]
    # Batch sizes the probe added and rates refinement added are replicated too.
    assert {"batch_size-batch=16-seed=1", "lr_sweep-lr=5.5e-3-seed=1"} <= set(two.runs)
    assert two.run("no_norm-lr=1e-4-seed=1").changes == "norm=none, lr=1e-4, seed=1"
    for name, section in two.sections.items():
        assert section.runs == one.sections[name].runs
        if section.kind in ("tokenizer", "generate"):  # drawn from no runs: sampling keeps the first seed
            assert section.replicas == {}
        else:
            assert section.replicas == {run: (f"{run}-seed=1",) for run in section.runs}
    assert two.sections["no_norm"].replica_labels() == [("norm=none lr=3e-3", "no_norm-lr=3e-3-seed=1"),
                                                        ("norm=none lr=1e-4", "no_norm-lr=1e-4-seed=1"),
                                                        ("baseline", "baseline-seed=1")]
    assert two.sections["generate"].generation.runs == one.sections["generate"].generation.runs
    # Refinement reads the first seed's runs alone.
    assert two.rate_sweeps["lr_sweep"].runs == one.rate_sweeps["lr_sweep"].runs
    assert two.sections_using()["baseline-seed=1"] == ["lr_sweep", "batch_size", "no_norm"]


@pytest.mark.parametrize("seeds, message", [
    ([0, 0], "non-unique"), ([], "non-empty"), ([0, -1], "less than the minimum"), ("0", "not of type 'array'"),
    ([1, 0], r"the first seed must be the baseline's training.seed \(0\), got 1"),
])
def test_a_bad_seeds_list_fails_in_one_line_naming_seeds(seeds, message):
    with pytest.raises(ValueError, match=rf"^config seeds(\.1)?: .*{message}") as error:
        build_plan(validate_config({**small_config(), "seeds": seeds}))
    assert "\n" not in str(error.value)


def test_several_seeds_leave_no_run_a_seed_of_its_own():
    config = small_config(lucky={"overrides": {"training.seed": 7}})
    assert build_plan(config).run("lucky").seed == 7  # one seed: a run may set its own
    with pytest.raises(ValueError, match=r"^config seeds: run 'lucky' sets training.seed \(7\)"):
        build_plan({**config, "seeds": [0, 1]})
    config["baseline"]["training"]["seed"] = 3  # the first seed follows the baseline's
    assert build_plan({**config, "seeds": [3, 4], "experiments": small_config()["experiments"]}).seeds == (3, 4)


# ---- `tinylm plan` ---------------------------------------------------------------------------

def tinylm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinylm", *args], capture_output=True, text=True, cwd=REPO)


def test_plan_command_prints_every_run_and_totals():
    result = tinylm("plan", "--configfile", "config/reference.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    plan = build_plan(resolve_config([REPO / "config/reference.yaml"]))
    for name in plan.runs:
        assert any(line.startswith(name + " ") for line in lines), name
    total = next(line for line in lines if line.startswith("total"))
    assert f"{len(plan.runs)} runs" in total and f"{sum(r.steps for r in plan.runs.values()):,}" in total
    assert "40% MFU" in result.stdout  # the stated throughput of the GPU-time estimate


def test_plan_command_lists_the_replicas_as_runs():
    one, two = (json.loads(tinylm("plan", "--configfile", "config/test.yaml", "--no-memory", "--json",
                                  "--config", f"seeds={seeds}").stdout) for seeds in ("[0]", "[0, 1]"))
    assert len(two["runs"]) == 2 * len(one["runs"]) and two["seeds"] == [0, 1]
    assert two["runs"]["nope-seed=1"]["replica_of"] == "nope" and two["runs"]["nope-seed=1"]["seed"] == 1
    assert two["sections"]["nope"]["replicas"] == {"nope": ["nope-seed=1"], "baseline": ["baseline-seed=1"]}
    table = tinylm("plan", "--configfile", "config/test.yaml", "--no-memory", "--config", "seeds=[0, 1]").stdout
    assert f"{len(two['runs'])} runs" in table and "replicated at seed 1" in table


def test_plan_command_predicts_every_runs_memory_and_what_fits(tmp_path):
    result = tinylm("plan", "--configfile", "config/reference.yaml", "--device-memory-gb", "10", "--json")
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)["runs"]
    for name, run in runs.items():
        assert run["device"] == "cuda" and run["predicted_peak_bytes"] > 0, name
        assert run["fits"] == (run["predicted_peak_bytes"] <= 10e9), name
        batch = run["config"]["training"]["batch_size"]
        assert (run["largest_batch"] >= batch) == run["fits"], name
    # The batch-size section's runs differ in batch alone (same model): memory grows with the batch.
    by_batch = sorted((run["config"]["training"]["batch_size"], run["predicted_peak_bytes"])
                      for name, run in runs.items() if name.startswith("batch_size"))
    assert [peak for _, peak in by_batch] == sorted({peak for _, peak in by_batch})
    assert runs["baseline"]["fits"] and not runs["owt"]["fits"]  # its vocabulary of 32000 needs more
    table = tinylm("plan", "--configfile", "config/reference.yaml", "--device-memory-gb", "10")
    assert "fits 10 GB" in table.stdout and "largest batch" in table.stdout and "Peak memory:" in table.stdout


def test_plan_command_errors_in_one_line():
    result = tinylm("plan", "--configfile", "config/test.yaml", "--config", "baseline={model: {d_modle: 8}}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "d_modle" in result.stderr
    missing = tinylm("plan", "--configfile", "config/nope.yaml")
    assert missing.returncode == 2 and "config/nope.yaml" in missing.stderr
