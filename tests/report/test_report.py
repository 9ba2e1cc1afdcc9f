"""Report units on small constructed runs: analysis, formatting, colours, index, and input errors.

The sections themselves run on real tiny training runs in test_report_real_runs.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny_run import write_run, write_summary

from tinylm.cli import main
from tinylm.report import findings, samples
from tinylm.report.edge import bracket_text
from tinylm.report.index import write_index
from tinylm.report.kinds.lr_sweep import section as lr_sweep
from tinylm.report.kinds.variant.section import variant_rates_text, variant_text
from tinylm.report.runs import PALETTE, load_runs, read_metrics
from tinylm.report.tables import Column, fmt_bytes, fmt_duration, fmt_loss, fmt_rate, fmt_text, markdown_table


@pytest.fixture
def sweep(tmp_path):
    """Four rates; the two largest diverge; 3e-3 is best."""
    finals = {1e-3: 2.5, 3e-3: 2.2, 1e-2: None, 3e-2: None}
    return load_runs([(f"lr={fmt_rate(lr)}", str(write_run(tmp_path / f"run{i}", lr, final)))
                      for i, (lr, final) in enumerate(finals.items())])


def test_edge_of_stability_constructed_case(sweep):
    edge = lr_sweep.edge_of_stability(sweep)
    assert edge.smallest_failing.lr == 1e-2  # not 3e-2, the other diverging rate
    assert edge.best.lr == 3e-3
    assert edge.largest_stable.lr == 3e-3
    assert edge.ratio == pytest.approx(1e-2 / 3e-3)
    assert edge.unigram is None and edge.outcomes == {"lr=1e-3": "trains", "lr=3e-3": "trains",
                                                      "lr=1e-2": "diverged", "lr=3e-2": "diverged"}
    text = lr_sweep.lr_sweep_text(sweep, edge)
    assert ("2 of 4 failed: 1e-2 diverged at step 10 (training loss 15.000, from 4.900 at step 1; lr 1e-2); "
            "3e-2 diverged at step 10 (training loss 15.000, from 4.900 at step 1; lr 3e-2).") in text
    assert "The best rate is 3e-3, with a final validation loss of 2.200" in text
    assert "the unigram loss, which would also mark runs that stop learning, is not known here" in text
    bracket = bracket_text(edge)
    assert ("The edge of stability lies between 3e-3 (trains) and 1e-2 (fails), a bracket of 3.33x; the smallest "
            "failing rate is 3.33x the best (3e-3).") in bracket
    # LR sensitivity: the mean of min(final, initial) over the rates less the best; the diverged
    # rates count at the initial loss (4.900 here).
    assert edge.lr_sensitivity == pytest.approx((2.5 + 2.2 + 4.9 + 4.9) / 4 - 2.2)
    assert "LR sensitivity" in bracket


def test_a_rate_closer_to_the_unigram_loss_than_to_the_best_stopped_learning(tmp_path):
    # Tokens 0 and 1 equally often: with add-one counts the unigram loss is ln 2 = 0.693.
    tokens = tmp_path / "tokens.npy"
    np.save(tokens, np.array([0, 1] * 50, dtype=np.uint16))
    finals = {1e-3: 0.30, 3e-3: 0.20, 1e-2: 0.45, 3e-2: None}  # midpoint of 0.693 and 0.200: 0.447
    runs = load_runs([(f"lr={fmt_rate(lr)}",
                       str(write_run(tmp_path / f"run{i}", lr, final, tokens=tokens, vocab_size=2)))
                      for i, (lr, final) in enumerate(finals.items())])
    edge = lr_sweep.edge_of_stability(runs)
    assert edge.unigram == pytest.approx(math.log(2))
    assert edge.threshold == pytest.approx((math.log(2) + 0.2) / 2)
    assert edge.outcomes == {"lr=1e-3": "trains", "lr=3e-3": "trains", "lr=1e-2": "stopped learning",
                             "lr=3e-2": "diverged"}
    assert edge.smallest_failing.lr == 1e-2 and edge.largest_stable.lr == 3e-3 and edge.best.lr == 3e-3
    text = lr_sweep.lr_sweep_text(runs, edge)
    assert "no better than the unigram loss (0.693" in text and "above 0.447" in text
    assert "2 of 4 failed: 1e-2 stopped learning (final validation loss 0.450); 3e-2 diverged" in text
    assert "the smallest failing rate is 3.33x the best (3e-3)" in bracket_text(edge)


def test_known_words_are_looked_up_in_the_training_text(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("Once upon a time, Lily's dog ran.\n<|endoftext|>\n" * 3 + "The end " * 10)
    # A tiny read size: words cut at a chunk's end must still be found.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(samples, "TEXT_CHUNK_CHARS", 7)
        known = samples.known_words(["Lily's dog ran, the END.", "Once upon a blorp blorp zig", ""], train)
    assert known.per_sample == [1.0, 0.5, None]
    assert (known.total, known.known, known.unknown) == (11, 8, ["blorp", "zig"])
    assert samples.known_words_text(known).startswith("72.7% of the 11 generated words occur in the training text")
    assert "'blorp', 'zig'" in samples.known_words_text(known)
    with pytest.raises(FileNotFoundError, match="--train-text"):
        samples.known_words(["x"], tmp_path / "missing.txt")


def test_edge_of_stability_when_nothing_or_everything_diverges(tmp_path):
    stable = load_runs([("a", str(write_run(tmp_path / "a", 1e-3, 2.0))),
                        ("b", str(write_run(tmp_path / "b", 1e-2, 2.1)))])
    edge = lr_sweep.edge_of_stability(stable)
    assert edge.smallest_failing is None and edge.ratio is None
    assert "lies above the largest rate tried, 1e-2" in lr_sweep.lr_sweep_text(stable, edge)
    unstable = load_runs([("c", str(write_run(tmp_path / "c", 1.0, None)))])
    edge = lr_sweep.edge_of_stability(unstable)
    assert edge.best is None and edge.smallest_failing.lr == 1.0
    assert "Every rate diverged" in lr_sweep.lr_sweep_text(unstable, edge)


def test_divergence_point_is_the_last_finite_loss(sweep):
    run = next(r for r in sweep if r.lr == 1e-2)
    step, loss = run.divergence_point()
    finite = run.metrics.dropna(subset=["train_loss"])
    assert step == run.summary.diverged_at_step
    assert loss == finite["train_loss"].iloc[-1] and math.isfinite(loss)
    assert run.legend.endswith("(diverged)")


def test_variant_text_states_the_differences(sweep):
    baseline, variant = sweep[1], sweep[0]
    frame = findings.runs_frame(sweep, baseline)
    assert frame.loc[0, "val_vs_baseline"] == pytest.approx(2.5 - 2.2)
    text = variant_text(sweep, baseline)
    assert f"{variant.label} ends at 2.500, +0.300 (worse than the baseline)" in text
    assert "lr=1e-2 diverged at step 10 (training loss 15.000, from 4.900 at step 1; lr 1e-2)." in text


def test_a_divergence_during_the_warm_up_says_so(tmp_path):
    # Diverging at a fraction of the configured rate says little about that rate.
    runs = load_runs([("baseline", str(write_run(tmp_path / "base", 3e-3, 2.2))),
                      ("early", str(write_run(tmp_path / "early", 3e-3, None, warmup_steps=15)))])
    text = variant_text(runs, runs[0])
    assert ("early diverged at step 10 (training loss 15.000, from 4.900 at step 1; lr 2e-3, "
            "still warming up to 3e-3).") in text


def test_variant_rates_text_places_the_variants_edge_against_the_baselines_rate(tmp_path):
    def variant_runs(finals):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        return load_runs([("baseline", str(write_run(out / "base", 3e-3, 2.2)))]
                         + [(f"v lr={fmt_rate(lr)}", str(write_run(out / f"v{i}", lr, final)))
                            for i, (lr, final) in enumerate(finals.items())])

    runs = variant_runs({1e-3: 2.5, 3e-3: 2.3, 1e-2: None})
    assert variant_rates_text(runs, runs[0]) == (
        "The smallest rate at which the variant diverged is 1e-2, 3.33x the baseline's rate (3e-3), and it "
        "trains at 1e-3 and 3e-3: its edge of stability lies above the baseline's rate.")
    runs = variant_runs({1e-3: 2.5, 3e-3: None, 1e-2: None})
    assert variant_rates_text(runs, runs[0]).endswith(
        "is 3e-3, 1.00x the baseline's rate (3e-3), and it trains at 1e-3: its edge of stability lies at or "
        "below the baseline's rate.")
    runs = variant_runs({1e-3: 2.5, 3e-3: 2.3})
    assert variant_rates_text(runs, runs[0]) == "None of the variant's 2 rates diverged."
    assert variant_rates_text(runs[:2], runs[0]) == ""  # one rate: nothing to place


def test_colours_follow_the_run_across_sections(tmp_path):
    dirs = {name: str(write_run(tmp_path / name, 1e-3, 2.0)) for name in ("base", "x", "y")}
    order = ["base", "x", "y"]
    one = load_runs([("baseline", dirs["base"]), ("x", dirs["x"])], order)
    two = load_runs([("y", dirs["y"]), ("lr=1e-3", dirs["base"])], order)
    assert one[0].colour == two[1].colour == PALETTE[0]  # same run, different label and position
    assert len({r.colour for r in one + two}) == 3


def test_formatting():
    assert [fmt_rate(x) for x in (1e-2, 3e-3, 1.5e-4, 0.3, 10.0, None)] == ["1e-2", "3e-3", "1.5e-4", "0.3", "10", "—"]
    assert fmt_bytes(512) == "512 B" and fmt_bytes(3 * 2**20) == "3.0 MiB"
    assert fmt_duration(5400) == "1.5 h" and fmt_duration(float("nan")) == "—"
    assert fmt_loss(float("inf")) == "—"
    table = markdown_table(pd.DataFrame({"a": ["x|y"], "b": [None]}),
                           [Column("a", "A", fmt_text), Column("b", "B", fmt_loss)])
    assert table.splitlines() == ["| A | B |", "|---|---:|", "| x\\|y | — |"]


def test_malformed_metrics_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "train_lo\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not valid JSON"):
        read_metrics(path)


def test_cli_errors_name_the_culprit(tmp_path, capsys):
    run = write_run(tmp_path / "run", 1e-3, 2.0)
    cases = [
        (["lr_sweep", "--out-dir", str(tmp_path / "o"), "--run", "a", str(tmp_path / "missing")], "missing"),
        (["lr_sweep", "--out-dir", str(tmp_path / "o"), "--run", "a", str(run), "--run", "a", str(run)],
         "label 'a' is given twice"),
        (["variant", "--out-dir", str(tmp_path / "o"), "--run", "a", str(run), "--baseline", "b"], "'b'"),
        (["variant", "--out-dir", str(tmp_path / "o"), "--run", "a", str(run)], "--baseline is required"),
        (["tokenizer", "--out-dir", str(tmp_path / "o")], "--tokenizer-report is required"),
        (["batch_size", "--out-dir", str(tmp_path / "o")], "--run LABEL RUN_DIR is required"),
    ]
    for args, message in cases:
        assert main(["report", *args]) == 2
        assert message in capsys.readouterr().err


def test_index_keeps_the_given_order_and_rewrites_links(tmp_path):
    for key, body in (("owt", "![curves](loss.png) [site](https://example.org) [top](#x)"), ("lr_sweep", "[t](t.csv)")):
        (tmp_path / key).mkdir()
        (tmp_path / key / "section.md").write_text(f"## {key}\n\n{body}\n")
    readme = write_index([tmp_path / "lr_sweep" / "section.md", tmp_path / "owt" / "section.md"],
                         tmp_path / "README.md")
    text = readme.read_text()
    assert text.index("## lr_sweep") < text.index("## owt")
    assert "![curves](owt/loss.png)" in text and "[t](lr_sweep/t.csv)" in text
    assert "(https://example.org)" in text and "(#x)" in text
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "section.md").write_text("x")
    with pytest.raises(ValueError, match="other/section.md: not a section page"):
        write_index([tmp_path / "other" / "section.md"], tmp_path / "README.md")


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below `folder`, hidden ones too: {relative path: content}."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_the_index_writes_all_its_files_or_leaves_the_old_ones(tmp_path):
    report, runs = tmp_path / "report", tmp_path / "runs"
    page = report / "nope" / "section.md"
    page.parent.mkdir(parents=True)
    page.write_text("## nope\n\nNoPE against the baseline.\n")
    (tmp_path / "plan.json").write_text(json.dumps({"runs": {"baseline": {"changes": "", "sections": ["nope"]}}}))

    def index() -> Path:
        return write_index([page], report / "README.md", tmp_path / "plan.json", runs)

    write_summary(runs / "baseline", final_val_loss=3.0)
    index()
    written = files_under(report)
    assert {"README.md", "runs.csv", "runs.md", "environments.csv", "environments.md"} <= set(written)
    # A malformed summary: no table of runs can be written.
    summary = runs / "baseline" / "summary.json"
    summary.write_text(summary.read_text().replace('"completed"', '"finished"'))
    with pytest.raises(ValueError, match="status"):
        index()
    assert files_under(report) == written
    # A new loss but a page that is not a section: found after the new tables of runs were written.
    write_summary(runs / "baseline", final_val_loss=2.5)
    page.write_text("no heading\n")
    with pytest.raises(ValueError, match="not a section page"):
        index()
    assert files_under(report) == {**written, "nope/section.md": b"no heading\n"}  # no temporary file left


def test_overview_has_one_row_per_trained_run_and_groups_environments(tmp_path):
    from tinylm.report.overview import write_overview

    env = {"device_name": "cpu A", "torch_version": "2.13.0", "git_commit": "abc", "git_dirty": False,
           "cuda_version": None}
    for name, loss, device in (("baseline", 3.0, "cpu A"), ("nope", 3.2, "cpu B")):
        write_summary(tmp_path / "runs" / name, steps=10, tokens=640, time_s=2.0, tokens_per_s=320.0,
                      final_val_loss=loss, best_val_loss=loss - 0.1, params=1000,
                      provenance={**env, "device_name": device})
    plan = {"runs": {"baseline": {"changes": "", "sections": ["lr_sweep", "nope"]},
                     "nope": {"changes": "position=none", "sections": ["nope"]},
                     # planned before the probe, not trained
                     "batch_size-batch=64": {"changes": "batch=64", "sections": []}},
            "sections": {"lr_sweep": {"runs": {"baseline": "lr=3e-3"}},
                         "nope": {"runs": {"nope": "NoPE", "baseline": "baseline"}}}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    markdown = write_overview(tmp_path / "plan.json", tmp_path / "runs", tmp_path)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert list(runs["run"]) == ["baseline", "nope"]
    assert list(runs["sections"]) == ["lr_sweep, nope", "nope"] and runs.loc[1, "changes"] == "position=none"
    assert list(runs["final_val_loss"]) == [3.0, 3.2] and "provenance.git_commit" in runs.columns
    envs = pd.read_csv(tmp_path / "environments.csv")
    assert list(envs["device_name"]) == ["cpu A", "cpu B"] and list(envs["runs"]) == [1, 1]
    assert list(envs["cuda_version"]) == ["none"] * 2 and list(envs["hostname"]) == ["test"] * 2
    assert "| nope | nope | position=none | completed |" in markdown


def test_stability_text_names_the_largest_spike_against_the_threshold(sweep):
    run = next(r for r in sweep if r.lr == 1e-3)
    run.metrics.loc[run.metrics["step"] == 6, "train_loss"] = 5.0  # after 4.5 at step 5: a rise of 0.5
    assert findings.largest_spike(run) == (6.0, pytest.approx(0.5))
    text = findings.stability_text(run)
    assert "lr=1e-3 did not diverge" in text and "+0.500 (step 6)" in text
    assert "2x the untrained model's smoothed loss (9.800)" in text  # the reference, 4.9
    assert findings.stability_text(next(r for r in sweep if r.diverged)) == ""


# ---- findings over seeds (config `seeds`) ------------------------------------------------------

def runs_at_seeds(folder: Path, finals: dict[str, tuple[float, list[float | None]]], **options) -> list:
    """Runs by label, each at seeds 0, 1, ... with the given final losses: {label: (lr, finals)};
    loaded as `tinylm report` loads --run and --replica."""
    specs, replicas = [], []
    for i, (label, (lr, losses)) in enumerate(finals.items()):
        for seed, loss in enumerate(losses):
            run_dir = str(write_run(folder / f"run{i}-seed={seed}", lr, loss, seed=seed))
            (replicas if seed else specs).append((label, run_dir))
    return load_runs(specs, replicas=replicas, **options)


def test_the_table_of_runs_gives_the_mean_and_spread_over_seeds_paired_by_seed(tmp_path):
    runs = runs_at_seeds(tmp_path, {"baseline": (3e-3, [3.0, 3.1]), "NoPE": (3e-3, [3.3, 3.35]),
                                    "shaky": (3e-3, [3.2, None])})
    assert [r.seed for r in runs[1].at_seeds] == [0, 1] and runs[1].replicas[0].colour == runs[1].colour
    rows = {row["run"]: row for _, row in findings.runs_frame(runs, runs[0]).iterrows()}
    nope = rows["NoPE"]
    assert nope["val_vs_baseline"] == pytest.approx(0.3)  # the first seed's, as with one seed
    # Seed 0: 3.3 - 3.0, seed 1: 3.35 - 3.1; sample standard deviation (n - 1).
    assert nope["val_vs_baseline_mean"] == pytest.approx(0.275)
    assert nope["val_vs_baseline_std"] == pytest.approx(math.sqrt(2 * 0.025 ** 2))
    assert (nope["val_vs_baseline_min"], nope["val_vs_baseline_max"]) == pytest.approx((0.25, 0.3))
    assert nope["final_val_loss_mean"] == pytest.approx(3.325) and nope["seeds"] == 2
    assert nope["final_val_loss_std"] == pytest.approx(0.025 * math.sqrt(2))
    assert (rows["baseline"]["val_vs_baseline_mean"], rows["baseline"]["val_vs_baseline_std"]) == (0, 0)
    # A seed without a final loss (diverged) leaves no mean: a mean of the others would hide it.
    assert pd.isna(rows["shaky"]["val_vs_baseline_mean"]) and pd.isna(rows["shaky"]["final_val_loss_mean"])
    assert pd.isna(rows["shaky"]["val_vs_baseline_min"]) and pd.isna(rows["shaky"]["val_vs_baseline_max"])
    one = runs_at_seeds(tmp_path / "one", {"baseline": (3e-3, [3.0]), "NoPE": (3e-3, [3.3])})
    nope = findings.runs_frame(one).iloc[1]
    assert nope["final_val_loss_mean"] == 3.3 and nope["final_val_loss_std"] is None and nope["seeds"] == 1
    assert nope["val_vs_baseline_mean"] is None  # no baseline given


def test_a_variant_says_whether_it_differs_from_the_baseline_at_every_seed(tmp_path):
    runs = runs_at_seeds(tmp_path, {"baseline": (3e-3, [3.0, 3.1]), "NoPE": (3e-3, [3.3, 3.35]),
                                    "post-norm": (3e-3, [2.99, 3.12]), "shaky": (3e-3, [3.2, None])})
    text = variant_text(runs, runs[0])
    assert "NoPE ends at 3.300, +0.300 (worse than the baseline). NoPE is worse than the baseline at every " \
           "seed: +0.275 ± 0.035 over 2 seeds." in text
    assert "post-norm is worse than the baseline at 1 of 2 seeds: +0.005 ± 0.021 over 2 seeds." in text
    assert "shaky diverged at 1 of 2 seeds (seed 1)." in text
    alone = runs_at_seeds(tmp_path / "one", {"baseline": (3e-3, [3.0]), "NoPE": (3e-3, [3.3])})
    assert variant_text(alone, alone[0]) == ("The baseline (lr 3e-3) ends at a final validation loss of 3.000. NoPE "
                                             "ends at 3.300, +0.300 (worse than the baseline). Every run has 1,000 "
                                             "parameters.")  # one seed: as before seeds existed


def test_the_variants_table_shows_the_spread_and_the_csv_always_has_it(tmp_path):
    def final_losses(finals: dict, out: Path) -> pd.DataFrame:
        args = []
        for i, (label, losses) in enumerate(finals.items()):
            for seed, loss in enumerate(losses):
                run_dir = write_run(out / "runs" / f"run{i}-seed={seed}", 3e-3, loss, seed=seed)
                args += ["--replica" if seed else "--run", label, str(run_dir)]
        assert main(["report", "variant", "--out-dir", str(out / "nope"), "--baseline", "baseline", *args]) == 0
        return pd.read_csv(out / "nope" / "final_losses.csv").set_index("run")

    two = final_losses({"baseline": [3.0, 3.1], "NoPE": [3.3, 3.35]}, tmp_path / "two")
    assert two.loc["NoPE", "val_vs_baseline_mean"] == pytest.approx(0.275) and two.loc["NoPE", "seeds"] == 2
    assert "| seeds |" in (tmp_path / "two" / "nope" / "final_losses.md").read_text()
    one = final_losses({"baseline": [3.0], "NoPE": [3.3]}, tmp_path / "one")
    assert one.loc["NoPE", "val_vs_baseline_mean"] == pytest.approx(0.3) and one.loc["NoPE", "seeds"] == 1
    assert math.isnan(one.loc["NoPE", "val_vs_baseline_std"])  # empty in the CSV
    assert "seeds" not in (tmp_path / "one" / "nope" / "final_losses.md").read_text()


def test_a_sweep_says_whether_its_best_and_failing_rates_are_the_same_at_every_seed(tmp_path):
    same = runs_at_seeds(tmp_path / "same", {"lr=1e-3": (1e-3, [2.5, 2.55]), "lr=3e-3": (3e-3, [2.2, 2.25]),
                                             "lr=1e-2": (1e-2, [None, None]), "lr=3e-2": (3e-2, [None, None])})
    text = lr_sweep.lr_sweep_text(same, lr_sweep.edge_of_stability(same))
    assert "At every seed (0, 1), the best rate is 3e-3, and 1e-2 and 3e-2 fail." in text
    moved = runs_at_seeds(tmp_path / "moved", {"lr=1e-3": (1e-3, [2.5, 2.55]), "lr=3e-3": (3e-3, [2.2, 2.35]),
                                               "lr=1e-2": (1e-2, [2.3, None])})
    text = lr_sweep.lr_sweep_text(moved, lr_sweep.edge_of_stability(moved))
    assert ("The seeds disagree: at seed 0 the best rate is 3e-3, and no rate fails; at seed 1 the best rate is "
            "3e-3, and 1e-2 fails.") in text
    alone = runs_at_seeds(tmp_path / "one", {"lr=1e-3": (1e-3, [2.5]), "lr=3e-3": (3e-3, [2.2])})
    assert "seed" not in lr_sweep.lr_sweep_text(alone, lr_sweep.edge_of_stability(alone))


def test_the_batch_size_text_says_whether_the_best_batch_is_the_same_at_every_seed(tmp_path):
    from tinylm.report.kinds.batch_size.section import batch_size_text

    def batches(finals: dict[int, list[float]], out: Path) -> list:
        runs = runs_at_seeds(out, {f"batch={b}": (3e-3, losses) for b, losses in finals.items()})
        for run, batch in zip(runs, finals):
            for at_seed in run.at_seeds:
                at_seed.config.training.batch_size = batch
        return runs

    assert "At every seed (0, 1), the lowest final loss comes from batch 8." in \
        batch_size_text(batches({4: [2.5, 2.6], 8: [2.2, 2.3]}, tmp_path / "same"), None)
    moved = batches({4: [2.5, 2.2], 8: [2.2, 2.3]}, tmp_path / "moved")
    assert ("The seeds disagree: at seed 0 the lowest final loss comes from batch 8; at seed 1 the lowest final "
            "loss comes from batch 4.") in batch_size_text(moved, None)


def test_a_corpus_says_whether_it_ends_above_the_baseline_at_every_seed(tmp_path):
    from tinylm.report.kinds.corpus.section import comparison_text

    run, baseline = runs_at_seeds(tmp_path, {"OpenWebText": (3e-3, [4.7, 4.69]), "ts baseline": (3e-3, [3.09, 3.08])})
    assert ("OpenWebText is above ts baseline at every seed: +1.610 ± 0.000 over 2 seeds. The two use"
            in comparison_text(run, baseline))


def test_a_replica_names_a_run_and_a_seed_of_its_own(tmp_path, capsys):
    run, same_seed = write_run(tmp_path / "a", 1e-3, 2.0), write_run(tmp_path / "b", 1e-3, 2.1)
    out = ["--out-dir", str(tmp_path / "o")]
    assert main(["report", "lr_sweep", *out, "--run", "a", str(run), "--replica", "z", str(same_seed)]) == 2
    assert "--replica 'z' is not one of the --run labels: a" in capsys.readouterr().err
    assert main(["report", "lr_sweep", *out, "--run", "a", str(run), "--replica", "a", str(same_seed)]) == 2
    assert f"--replica 'a': {same_seed} is at seed 0, which 'a' already has" in capsys.readouterr().err


def test_the_edge_study_says_whether_each_sweeps_edge_is_the_same_at_every_seed(tmp_path):
    from tinylm.report.kinds.edge_scale.section import seeds_text

    same = runs_at_seeds(tmp_path / "same", {"lr=1e-3": (1e-3, [2.5, 2.6]), "lr=3e-3": (3e-3, [2.2, 2.3]),
                                             "lr=1e-2": (1e-2, [None, None])})
    assert seeds_text(same) == ("At every seed (0, 1), each sweep has the same best and smallest failing rate as in "
                                "the table (the first seed's).")
    moved = runs_at_seeds(tmp_path / "moved", {"lr=1e-3": (1e-3, [2.5, 2.6]), "lr=3e-3": (3e-3, [2.2, 2.3]),
                                               "lr=1e-2": (1e-2, [None, 2.25])})
    config = moved[0].config
    setting = f"RMSNorm (pre-norm) at {config.tokens_per_step:,} tokens per step"
    assert seeds_text(moved) == (
        "The best and smallest failing rates differ between seeds in 1 of 1 sweeps (the table gives the first "
        f"seed's): d_model {config.model.d_model}, {setting} (best 3e-3 and smallest failing 1e-2 at seed 0, "
        "best 1e-2 and none failing at seed 1).")
    assert seeds_text(runs_at_seeds(tmp_path / "one", {"lr=1e-3": (1e-3, [2.5])})) == ""


def test_the_edge_study_states_each_settings_trend_across_widths():
    from types import SimpleNamespace

    from tinylm.report.edge import EdgeOfStability
    from tinylm.report.kinds.edge_scale.section import trend_text

    def run(lr):
        return SimpleNamespace(lr=lr) if lr else None

    def edge(best, stable, failing, sensitivity):
        return EdgeOfStability(best=run(best), largest_stable=run(stable), smallest_failing=run(failing),
                               unigram=None, threshold=None, outcomes={}, lr_sensitivity=sensitivity)

    found = {(64, 1024, "pre"): edge(1e-2, 5e-2, 0.1, 0.5), (128, 1024, "pre"): edge(1e-2, 3e-2, 4e-2, 0.7),
             (256, 1024, "pre"): edge(3e-3, 2e-2, 3e-2, 0.6),
             (64, 1024, "none"): edge(1e-2, 1e-2, 1.5e-2, 6.0), (128, 1024, "none"): edge(3e-3, 3e-3, None, 7.0)}
    log = {"d_model": 512, "tokens_per_step": 32768, "norm": "pre", "ratio": 3.3, "label": "the log"}
    assert trend_text(found, [log]) == (
        "With RMSNorm (pre-norm), the smallest failing rate is 4.00x to 10.00x the best rate over 3 sweeps. "
        "With no norm, the smallest failing rate is 1.50x the best rate over 1 sweep. "
        "With RMSNorm (pre-norm) at 1,024 tokens per step, at d_model 64, 128, 256: the smallest failing rate is "
        "0.1, 4e-2, 3e-2 (falling as the model widens); its ratio to the best rate is 10.00x, 4.00x, 10.00x (the same "
        "at the widest as at the narrowest, not in between); the LR sensitivity is 0.500, 0.700, 0.600 (higher at the "
        "widest than at the narrowest, not monotonic in between). "
        "With no norm at 1,024 tokens per step, at d_model 64, 128: the smallest failing rate is 1.5e-2 at d_model "
        "64; its ratio to the best rate is 1.50x at d_model 64; the LR sensitivity is 6.000, 7.000 (rising as the "
        "model widens); no rate fails above the best at d_model 128. "
        "For comparison, the log: 3.30x at d_model 512, RMSNorm (pre-norm) at 32,768 tokens per step.")
