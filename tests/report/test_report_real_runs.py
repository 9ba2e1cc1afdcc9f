"""The report sections on outputs of REAL tiny pipeline steps, run in-process through the CLI.

One module-scoped fixture writes a small synthetic story corpus, trains two BPE tokenizers and
their `tokenizer-report`, tokenizes the text, trains six tiny runs (three learning rates that train,
one, lr=10, that must diverge, one at a smaller batch, a post-norm and a SiLU variant), probes the largest
batch and samples text with `tinylm generate`. Every test then checks one section's files, figure
sizes, table rows and columns, and that the text states the numbers that are in the tables.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from tinylm.cli import main
from tinylm.config import RunConfig
from tinylm.report import KINDS
from tinylm.report.figures import DPI, SINGLE, WIDE
from tinylm.report.samples import words
from tinylm.report.tables import (
    fmt_bytes,
    fmt_duration,
    fmt_loss,
    fmt_rate,
    fmt_ratio,
    fmt_share,
    fmt_signed,
    fmt_speed,
)

pytestmark = pytest.mark.slow

VOCAB = 300
# label -> (lr, batch, architecture overrides)
RUNS = {
    "lr=1e-3": (1e-3, 8, {}),
    "lr=3e-3": (3e-3, 8, {}),
    "lr=1e-2": (1e-2, 8, {}),
    "lr=10": (10.0, 8, {}),             # far past the edge: must diverge
    "batch=2": (3e-3, 2, {}),
    "post_norm": (3e-3, 8, {"norm": "post"}),
    "SiLU": (3e-3, 8, {"ffn": "silu", "d_ff": 96}),
}
SWEEP = ["lr=1e-3", "lr=3e-3", "lr=1e-2", "lr=10"]
# The columns over seeds every comparison table's CSV ends with (one seed here: no spread).
OVER_SEEDS = ["final_val_loss_mean", "final_val_loss_std", "val_vs_baseline_mean", "val_vs_baseline_std",
              "val_vs_baseline_min", "val_vs_baseline_max", "seeds"]


def write_stories(path: Path, count: int, seed: int, names: list[str]) -> None:
    """Short, regular stories ending in <|endoftext|>: enough structure for a tiny model to learn."""
    rng = random.Random(seed)
    things = ["ball", "cat", "tree", "boat", "cake", "dog", "star", "hat"]
    feelings = ["happy", "sad", "tired", "brave", "kind"]
    stories = []
    for _ in range(count):
        name, thing, feeling = rng.choice(names), rng.choice(things), rng.choice(feelings)
        stories.append(f"Once upon a time, {name} had a {thing}. {name} was {feeling}. "
                       f"One day the {thing} was lost, and {name} looked for it. In the end {name} found "
                       f"the {thing} and was {rng.choice(feelings)} again.\n<|endoftext|>\n")
    path.write_text("".join(stories), encoding="utf-8")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report_runs")
    paths: dict[str, Path] = {}
    write_stories(root / "train.txt", 400, 0, ["Tom", "Lily", "Ben", "Sue"])
    write_stories(root / "valid.txt", 60, 1, ["Tom", "Lily", "Ben", "Sue"])
    write_stories(root / "other.txt", 200, 2, ["Maximilian", "Alexandra"])
    for name, text, vocab in (("stories", "train.txt", VOCAB), ("other", "other.txt", 280)):
        assert main(["train-bpe", "--input", str(root / text), "--vocab-size", str(vocab), "--special-token",
                     "<|endoftext|>", "--out-dir", str(root / f"tok_{name}"), "--workers", "1",
                     "--no-progress"]) == 0
    paths["train_text"] = root / "train.txt"
    paths["tokenizer_report"] = root / "tokenizers.json"
    assert main(["tokenizer-report", "--tokenizer", f"stories={root / 'tok_stories'}", "--tokenizer",
                 f"other={root / 'tok_other'}", "--corpus", f"stories={root / 'valid.txt'}", "--corpus",
                 f"other={root / 'other.txt'}", "--documents", "5", "--throughput-mb", "0.01",
                 "--out-json", str(paths["tokenizer_report"]), "--out-md", str(root / "tokenizers.md")]) == 0
    for split in ("train", "valid"):
        assert main(["tokenize", "--tokenizer-dir", str(root / "tok_stories"), "--input", str(root / f"{split}.txt"),
                     "--output", str(root / f"{split}.npy"), "--workers", "1", "--no-progress"]) == 0
    for label, (lr, batch, model) in RUNS.items():
        name = label.replace("=", "_")
        config = RunConfig.from_dict({
            "name": name,
            "model": {"vocab_size": VOCAB, "context_length": 16, "d_model": 32, "num_layers": 1, "num_heads": 2,
                      "d_ff": 64, **model},
            "optimizer": {"lr": lr, "warmup_steps": 2},
            "training": {"batch_size": batch, "max_steps": 16, "eval_interval": 4, "eval_batches": 2,
                         "log_interval": 1, "checkpoint_interval": 1000, "device": "cpu",
                         "final_eval_tokens": 2000},
            "data": {"train_tokens": str(root / "train.npy"), "valid_tokens": str(root / "valid.npy"),
                     "tokenizer_dir": str(root / "tok_stories")},
        })
        config.save(root / f"{name}.json")
        paths[label] = root / "runs" / name
        assert main(["train", "--config", str(root / f"{name}.json"), "--out-dir", str(paths[label]),
                     "--checkpoint-dir", str(root / "checkpoints" / name)]) == 0
    paths["max_batch"] = root / "max_batch.json"
    assert main(["max-batch", "--config", str(root / "lr_3e-3.json"), "--out", str(paths["max_batch"]),
                 "--cpu-memory-budget-mb", "64", "--max-batch", "64"]) == 0
    sweep_dirs = [str(paths[label]) for label in SWEEP]
    for key, settings in (("generate", ["--temperature", "0.8", "--top-p", "0.95", "--seeds", "0", "1"]),
                          ("sampling_grid", ["--temperatures", "0", "1", "--top-ps", "0.5", "1", "--seeds", "0"])):
        paths[key] = root / f"{key}.json"
        assert main(["generate", "--run-dir", *sweep_dirs, "--prompt", "Once upon a time", "--max-new-tokens", "12",
                     "--device", "cpu", "--out", str(paths[key]), *settings]) == 0
    return paths


# The report kind of each section these tests write (the plan gives them in the pipeline).
KIND = {"post_norm": "variant", "silu": "variant", "nope": "variant", "owt": "corpus"}


def report(section: str, out_dir: Path, runs: dict[str, Path], labels: list[str], *extra: str) -> Path:
    args = ["report", KIND.get(section, section), "--out-dir", str(out_dir), "--title", f"Section {section}"]
    for label in labels:
        args += ["--run", label, str(runs[label])]
    assert main(args + list(extra)) == 0
    return out_dir / "section.md"


def check_files(section: str, out_dir: Path) -> None:
    """Every declared output exists and is non-empty; PNGs decode at the intended size."""
    import matplotlib.image

    assert (out_dir / "section.md").stat().st_size > 0
    for stem in KINDS[KIND.get(section, section)].figures:
        for ext in ("png", "svg"):
            assert (out_dir / f"{stem}.{ext}").stat().st_size > 0, f"{section}/{stem}.{ext}"
        height, width, _ = matplotlib.image.imread(out_dir / f"{stem}.png").shape
        assert (width, height) in {(round(w * DPI), round(h * DPI)) for w, h in (WIDE, SINGLE)}
        assert 700 <= width <= 1200 and height <= 600  # readable at 100% in a Markdown viewer
    for stem in KINDS[KIND.get(section, section)].tables:
        for ext in ("csv", "md"):
            assert (out_dir / f"{stem}.{ext}").stat().st_size > 0, f"{section}/{stem}.{ext}"


def paragraph(section_md: Path) -> str:
    """The generated text: the section's first paragraph after its heading."""
    return section_md.read_text().split("\n\n")[1]


def test_lr_sweep_finds_the_diverging_rate(runs, tmp_path):
    labels = ["lr=1e-3", "lr=3e-3", "lr=1e-2", "lr=10"]
    md = report("lr_sweep", tmp_path / "lr_sweep", runs, labels, "--rate-sweep")
    check_files("lr_sweep", tmp_path / "lr_sweep")
    table = pd.read_csv(tmp_path / "lr_sweep" / "lr_sweep.csv")
    assert sorted(table["run"]) == sorted(labels)
    assert list(table.columns) == ["run", "lr", "status", "final_val_loss", "best_val_loss",
                                   "target_reached_step", "diverged", "steps", "outcome", *OVER_SEEDS]
    diverged = table[table["diverged"]]
    assert list(diverged["run"]) == ["lr=10"]
    assert set(table["outcome"]) <= {"trains", "diverged", "stopped learning"}
    assert table.loc[table["run"] == "lr=10", "outcome"].item() == "diverged"

    # The analysis, recomputed from the table alone.
    stable = table[~table["diverged"]]
    best = stable.loc[stable["final_val_loss"].idxmin()]
    failing = table[(table["outcome"] != "trains") & (table["lr"] > best["lr"])]
    ratio = failing["lr"].min() / best["lr"]
    text = paragraph(md)
    assert f"The best rate is {fmt_rate(best['lr'])}" in text
    assert fmt_loss(best["final_val_loss"]) in text
    assert "unigram loss (" in text  # the runs' token arrays are there, so the criterion is complete
    whole = md.read_text()  # the sweep's edge: a paragraph of its own, after the kind's
    assert f"and {fmt_rate(failing['lr'].min())} (fails)" in whole and f"{fmt_ratio(ratio)}x the best" in whole
    edge = pd.read_csv(tmp_path / "lr_sweep" / "edge_of_stability.csv")
    assert list(edge.columns) == ["best_lr", "best_final_val_loss", "largest_stable_lr", "smallest_diverging_lr",
                                  "ratio", "bracket_ratio", "lr_sensitivity"]
    assert edge.loc[0, "smallest_diverging_lr"] == failing["lr"].min()
    assert edge.loc[0, "ratio"] == pytest.approx(ratio)
    markdown = md.read_text()
    for _, row in stable.iterrows():  # the Markdown table shows every final loss as the text writes them
        assert f"| {row['run']} | {fmt_rate(row['lr'])} |" in markdown
        assert fmt_loss(row["final_val_loss"]) in markdown
    assert "lr=10 (diverged)" not in markdown  # legends say "(diverged)"; the table has a column for it


def test_batch_size_section(runs, tmp_path):
    out = tmp_path / "batch_size"
    md = report("batch_size", out, runs, ["batch=2", "lr=3e-3"], "--baseline", "lr=3e-3",
                "--max-batch", str(runs["max_batch"]))
    check_files("batch_size", out)
    table = pd.read_csv(out / "batch_size.csv")
    assert list(table["batch_size"]) == [2, 8]
    assert list(table.columns) == ["run", "batch_size", "lr", "peak_mem_bytes", "mem_percent", "tokens_per_s",
                                   "final_val_loss", "status", *OVER_SEEDS]
    text = paragraph(md)
    configs = [json.loads((runs[label] / "config.json").read_text()) for label in ("batch=2", "lr=3e-3")]
    budgets = [c["training"]["max_steps"] * c["training"]["batch_size"] * c["model"]["context_length"]
               for c in configs]
    assert f"Batch sizes 2, 8 trained on budgets of {budgets[0]:,} to {budgets[1]:,} tokens" in text
    fastest = table.loc[table["tokens_per_s"].idxmax()]
    assert f"Throughput peaks at batch {fastest['batch_size']} with {fastest['tokens_per_s']:,.0f} tokens/s" in text
    best = table.loc[table["final_val_loss"].idxmin()]
    assert f"{fmt_loss(best['final_val_loss'])}, comes from batch {best['batch_size']}" in text
    largest = json.loads(runs["max_batch"].read_text())["largest_batch"]
    assert f"64.0 MiB memory budget on cpu is {largest:,}." in text


def test_variant_section_against_baseline(runs, tmp_path):
    out = tmp_path / "post_norm"
    md = report("post_norm", out, runs, ["lr=3e-3", "post_norm"], "--baseline", "lr=3e-3")
    check_files("post_norm", out)
    table = pd.read_csv(out / "final_losses.csv")
    assert list(table["run"]) == ["lr=3e-3", "post_norm"]
    assert {"final_train_loss", "final_val_loss", "val_vs_baseline", "params"} <= set(table.columns)
    difference = table.loc[1, "final_val_loss"] - table.loc[0, "final_val_loss"]
    assert table.loc[1, "val_vs_baseline"] == pytest.approx(difference)
    text = paragraph(md)
    assert f"post_norm ends at {fmt_loss(table.loc[1, 'final_val_loss'])}, {fmt_signed(difference)}" in text
    assert fmt_signed(difference) in md.read_text().split("final_losses.csv")[1]  # ... and in the table


def test_silu_section_states_parameter_counts(runs, tmp_path):
    out = tmp_path / "silu"
    md = report("silu", out, runs, ["lr=3e-3", "SiLU"], "--baseline", "lr=3e-3")
    check_files("silu", out)
    table = pd.read_csv(out / "final_losses.csv")
    assert list(table["d_ff"]) == [64, 96]
    summaries = [json.loads((runs[label] / "summary.json").read_text()) for label in ("lr=3e-3", "SiLU")]
    assert list(table["params"]) == [s["params"] for s in summaries]
    text = paragraph(md)
    assert "SiLU: silu d_ff 96 = 3.00 d_model" in text
    if summaries[0]["params"] == summaries[1]["params"]:  # 3 x 64 = 2 x 96: matched on purpose
        assert f"Every run has {summaries[0]['params']:,} parameters." in text
    else:
        assert f"lr=3e-3 {summaries[0]['params']:,}, SiLU {summaries[1]['params']:,}" in text


def test_owt_section_and_index(runs, tmp_path):
    report("owt", tmp_path / "report" / "owt", runs, ["lr=1e-2", "lr=3e-3"], "--baseline", "lr=3e-3",
           "--generate", str(runs["generate"]))
    check_files("owt", tmp_path / "report" / "owt")
    report("nope", tmp_path / "report" / "nope", runs, ["lr=3e-3", "post_norm"], "--baseline", "lr=3e-3")
    readme = tmp_path / "report" / "README.md"
    sections = [str(tmp_path / "report" / s / "section.md") for s in ("nope", "owt")]
    assert main(["report", "index", "--out", str(readme), "--sections", *sections]) == 0
    text = readme.read_text()
    assert text.index("## Section nope") < text.index("## Section owt")  # the order given (the plan's)
    assert "- [Section nope](#section-nope)" in text
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert links and all((readme.parent / link).is_file() for link in links)


def test_a_section_that_fails_half_way_leaves_its_old_files(runs, tmp_path):
    out = tmp_path / "owt"
    report("owt", out, runs, ["lr=1e-2", "lr=3e-3"], "--baseline", "lr=3e-3", "--generate", str(runs["generate"]),
           "--train-text", str(runs["train_text"]))
    written = {path.name: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    # Another run, so every file would change; its curves and losses are drawn before the samples'
    # words are looked up in a training text that is not there.
    args = ["report", "corpus", "--out-dir", str(out), "--run", "lr=1e-3", str(runs["lr=1e-3"]), "--run", "lr=3e-3",
            str(runs["lr=3e-3"]), "--baseline", "lr=3e-3", "--generate", str(runs["generate"]),
            "--train-text", str(tmp_path / "missing.txt")]
    assert main(args) == 2
    assert {path.name: path.read_bytes() for path in out.rglob("*") if path.is_file()} == written


def test_tokenizer_section(runs, tmp_path):
    out = tmp_path / "tokenizer"
    md = report("tokenizer", out, runs, [], "--tokenizer-report", str(runs["tokenizer_report"]))
    check_files("tokenizer", out)
    source = json.loads(runs["tokenizer_report"].read_text())
    tokenizers = pd.read_csv(out / "tokenizers.csv", keep_default_na=False)
    assert list(tokenizers["tokenizer"]) == list(source["tokenizers"])
    per_corpus = pd.read_csv(out / "compression.csv")
    assert len(per_corpus) == len(source["tokenizers"]) * len(source["corpora"])
    assert list(per_corpus.columns[:2]) == ["tokenizer", "corpus"]
    text = paragraph(md)
    for name, info in source["tokenizers"].items():
        assert (f"The {name} tokenizer ({info['vocab_size']:,} tokens) trained in "
                f"{fmt_duration(info['training_time_s'])}") in text
        assert fmt_bytes(info["peak_memory_bytes"]) in text
    for corpus, rows in per_corpus.groupby("corpus"):
        best = rows.loc[rows["bytes_per_token"].idxmax()]
        assert f"On {corpus}, {best['tokenizer']} compresses best, at {fmt_ratio(best['bytes_per_token'])}" in text
    fastest = max(source["throughput"], key=lambda row: row["bytes_per_s"])
    assert f"{fmt_speed(fastest['bytes_per_s'])} bytes/s" in text
    assert fmt_duration(fastest["pile_825gb_s"]) in md.read_text().split("compression.csv")[1]


def test_generate_section(runs, tmp_path):
    out = tmp_path / "generate"
    md = report("generate", out, runs, [], "--generate", str(runs["generate"]),
                "--sampling-grid", str(runs["sampling_grid"]), "--train-text", str(runs["train_text"]))
    check_files("generate", out)
    generated = json.loads(runs["generate"].read_text())
    samples = pd.read_csv(out / "samples.csv")
    assert list(samples["seed"]) == [0, 1]
    # The share of each sample's words in the training text, recomputed from the whole text at once.
    vocabulary = set(words(runs["train_text"].read_text()))
    per_sample = [words(s["completion"]) for s in generated["samples"]]
    for sample_words, share in zip(per_sample, samples["known_word_ratio"]):
        assert share == pytest.approx(sum(w in vocabulary for w in sample_words) / len(sample_words))
    all_words = [w for sample_words in per_sample for w in sample_words]
    known = sum(w in vocabulary for w in all_words) / len(all_words)
    assert f"{fmt_share(known)} of the {len(all_words)} generated words occur in the training text" in md.read_text()
    grid = pd.read_csv(out / "sampling_settings.csv")
    assert sorted(zip(grid["temperature"], grid["top_p"])) == [(0.0, 0.5), (0.0, 1.0), (1.0, 0.5), (1.0, 1.0)]
    # The chosen run is the sweep's best non-diverged run, which the lr table would name too.
    finals = {label: json.loads((runs[label] / "summary.json").read_text())["final_val_loss"] for label in SWEEP}
    best = min((loss, label) for label, loss in finals.items() if loss is not None)[1]
    text = paragraph(md)
    assert f"Text from {runs[best].name} (" in text and fmt_loss(finals[best]) in text
    stopped = sum(s["stopped_at_eot"] for s in generated["samples"])
    assert f"{stopped} of 2 samples ended" in text
    markdown = md.read_text()
    for sample in generated["samples"]:
        assert "> " + sample["text"].splitlines()[0] in markdown
