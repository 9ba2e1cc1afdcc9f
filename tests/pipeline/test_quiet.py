"""The quiet `make run` wrapper: progress from Snakemake's output, each failure with its rule, log
and the line that says what went wrong."""
from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinylm.pipeline.quiet import Failure, Job, SnakemakeError, SnakemakeProgress, finish, follow

REPO = Path(__file__).resolve().parents[2]

# Snakemake 9's output for two jobs, one of which fails (trimmed to the lines that matter).
TRANSCRIPT = """\
Job stats:
job      count
-----  -------
a            1
bad          1
probe        1
all          1
total        4

[Tue Dec  1 21:55:23 2026]
localrule a:
    output: a.txt
    jobid: 2
[Tue Dec  1 21:55:23 2026]
localcheckpoint probe:
    output: p.json
    jobid: 4
[Tue Dec  1 21:55:23 2026]
Finished jobid: 4 (Rule: probe)
1 of 4 steps (25%) done
[Tue Dec  1 21:55:23 2026]
rule bad:
    output: d.txt
    log: logs/bad.log
    jobid: 3
[Tue Dec  1 21:55:23 2026]
Error in rule bad:
    message: None
    jobid: 3
    output: d.txt
    log: logs/bad.log (check log file(s) for error details)
[Tue Dec  1 21:55:24 2026]
Finished jobid: 2 (Rule: a)
2 of 4 steps (50%) done
"""


class Clock:
    """Time that passes as the output arrives: a second per tick (None), nothing per line."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def feed(self, lines):
        for line in lines:
            if line is None:
                self.now += 1.0
            yield line


LINES = TRANSCRIPT.splitlines(keepends=True)
STARTED_A = LINES.index("    jobid: 2\n") + 1  # the lines up to job 2's start


def test_progress_counts_jobs_running_rules_and_failures():
    progress = SnakemakeProgress()
    for line in LINES[:STARTED_A]:
        progress.read(line)
    assert progress.total == 4 and {job_id: job.rule for job_id, job in progress.running.items()} == {"2": "a"}
    events = [progress.read(line) for line in LINES[STARTED_A:]]
    assert events.count("failed") == 1 and events.count("finished") == 2  # the checkpoint job and job 2
    assert progress.done == 2 and progress.running == {}
    assert [(f.rule, f.log) for f in progress.failures] == [("bad", Path("logs/bad.log"))]
    assert progress.summary(75) == "[1:15] 2/4 jobs done; 1 failed"


def test_follow_logs_everything_and_prints_a_line_per_ended_job():
    log, out = io.StringIO(), io.StringIO()
    clock = Clock()
    follow(clock.feed(LINES[:STARTED_A] + [None] * 3 + LINES[STARTED_A:]), log, out, clock=clock, heartbeat_s=2.0)
    assert log.getvalue() == TRANSCRIPT  # ticks (None) write nothing to the log
    shown = out.getvalue().splitlines()
    assert "failed: rule bad" in shown
    assert shown[-1].endswith("2/4 jobs done; 1 failed")
    assert shown[0].endswith("0/4 jobs done; running: a")  # a heartbeat while job 2 ran
    assert shown[1].endswith("1/4 jobs done; running: a")  # the checkpoint job ended, job 2 still runs
    assert len(shown) == 5  # the heartbeat, two finished jobs, the failure and its summary


def test_the_reason_is_the_logs_error_line_else_snakemakes_error_else_the_output(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("downloading\ntinylm download: error: cannot get 'x.txt'\nbye\n\n")
    raised = SnakemakeError("ValueError", message=["data.train_tokens: too short"])
    exited = SnakemakeError("CalledProcessError", message=["Command 'set -euo pipefail;  x' returned non-zero",
                                                           "exit status 137."])
    assert Failure("a", logs=[log], error=raised).reason() == "tinylm download: error: cannot get 'x.txt'"
    log.write_text("starting\nrun:  77%|███████▋  | 232/300 [02:17<00:40,  1.69step/s]\n")
    assert Failure("a", logs=[log], error=raised).reason() == "ValueError: data.train_tokens: too short"
    assert Failure("a", logs=[log], error=exited).reason() == \
        "its shell command exited with status 137 (SIGKILL); the last line of its log: starting"  # not the bar
    assert Failure("a", logs=[log]).reason() == "starting"
    log.write_text("")
    assert Failure("a", logs=[log]).reason() == "(the log is empty)"
    assert Failure("a", logs=[tmp_path / "missing.log"]).reason() == f"(no log at {tmp_path / 'missing.log'})"

    job = Job("b")  # without a log: what it printed on Snakemake's output
    for line in ("reading tok/", "tinylm tokenize: error: no tokenizer", "bye"):
        job.printed(line)
    assert Failure("b", job, exited).reason() == "tinylm tokenize: error: no tokenizer"
    assert Failure("b", job, raised).reason() == "ValueError: data.train_tokens: too short"
    assert Failure("b", Job("b")).reason() == "see the Snakemake log"


# A Snakefile with one job of each way to fail (and one that succeeds).
FAILING = """\
rule all:
    input: "ok.txt", "raised.txt", "stderr.txt", "logged.txt", "killed.txt", "missing.txt"
rule ok:
    output: "ok.txt"
    shell: "echo ok > {output}"
rule raised:
    output: "raised.txt"
    log: "logs/raised.log"
    run:
        print("checking the token array")
        raise ValueError("data.train_tokens: 'x.npy' has 3 tokens, fewer than model.context_length + 1 = 129")
rule stderr:
    output: "stderr.txt"
    shell: "echo 'reading tok/'; echo 'tinylm tokenize: error: tokenizer directory tok/ does not exist' >&2; exit 2"
rule logged:
    output: "logged.txt"
    log: "logs/logged.log"
    shell: "(echo starting; echo 'tinylm train: error: data.train_tokens: no such file') > {log} 2>&1; exit 2"
rule killed:
    output: "killed.txt"
    log: "logs/killed.log"
    shell: "echo 'step 1/10' > {log}; kill -9 $$"
rule missing:
    output: "missing.txt"
    log: "logs/missing.log"
    shell: "echo 'wrote nothing' > {log}"
"""
# The options of profiles/default that shape the output (--latency-wait: the missing output, sooner).
PROFILE_OPTIONS = ("--keep-going", "--show-failed-logs", "--printshellcmds", "--latency-wait", "1")
# What each failure shows: the rule, its log (relative to the working directory) and the reason.
FAILED = {
    "raised": ("logs/raised.log", "ValueError: data.train_tokens: 'x.npy' has 3 tokens, fewer than "
                                  "model.context_length + 1 = 129"),  # a run: block's exception; its log is empty
    "stderr": (None, "tinylm tokenize: error: tokenizer directory tok/ does not exist"),  # no log: its stderr
    "logged": ("logs/logged.log", "tinylm train: error: data.train_tokens: no such file"),
    "killed": ("logs/killed.log", "its shell command was killed by SIGKILL; the last line of its log: step 1/10"),
    "missing": ("logs/missing.log", "MissingOutputException: Job 6 completed successfully, but some output files "
                                    "are missing."),
}


def failed_lines(text: str, workdir: Path) -> dict[str, str]:
    """{rule: its FAILED line} of the wrapper's closing lines, each checked against FAILED."""
    shown = {match[1]: line for line in text.splitlines() if (match := re.match(r"FAILED rule (\w+)", line))}
    for rule, line in shown.items():
        log, reason = FAILED[rule]
        where = f" (log: {workdir / log})" if log else ""
        assert line.startswith(f"FAILED rule {rule}{where}: {reason}"), line
    return shown


def test_each_kind_of_failure_in_snakemakes_real_output(tmp_path, monkeypatch):
    """Snakemake 9's output for FAILING (tests/transcripts): two jobs at a time, so the failures
    interleave, with the profile's --show-failed-logs copying logs in between."""
    monkeypatch.chdir(tmp_path)
    for name, text in {"raised": "", "logged": "starting\ntinylm train: error: data.train_tokens: no such file\n",
                       "killed": "step 1/10\n", "missing": "wrote nothing\n"}.items():
        (tmp_path / "logs").mkdir(exist_ok=True)
        (tmp_path / "logs" / f"{name}.log").write_text(text)
    transcript = (REPO / "tests/transcripts/snakemake-9-failures.txt").read_text()
    shown = io.StringIO()
    progress = follow(transcript.splitlines(keepends=True), io.StringIO(), shown)
    assert [line for line in shown.getvalue().splitlines() if line.startswith("failed:")] == [
        "failed: rule logged", "failed: rule stderr", "failed: rule missing", "failed: rule killed",
        "failed: rule raised"]
    assert progress.summary(0).endswith("1/7 jobs done; 5 failed") and not progress.running
    out = io.StringIO()
    finish(progress, 1, tmp_path / "smk.log", None, out)
    assert failed_lines(out.getvalue(), Path()).keys() == FAILED.keys()
    assert "snakemake failed" not in out.getvalue()


def run_wrapper(workdir: Path, *snakemake_args: str, snakefile: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tinylm.pipeline.quiet", "--log", str(workdir / "smk.log"), "--report",
               "report/README.md", "--", "--snakefile", str(snakefile or workdir / "Snakefile"), "--directory",
               str(workdir), *snakemake_args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_the_wrapper_shows_each_failure_of_a_real_run(tmp_path):
    (tmp_path / "Snakefile").write_text(FAILING)
    result = run_wrapper(tmp_path, "--cores", "2", *PROFILE_OPTIONS)
    assert result.returncode != 0
    assert failed_lines(result.stdout, tmp_path).keys() == FAILED.keys()
    assert "Report:" not in result.stdout and f"Full Snakemake output: {tmp_path / 'smk.log'}" in result.stdout
    assert "Error in rule logged" in (tmp_path / "smk.log").read_text()
    assert "Error in rule" not in result.stdout  # the job text stays in the log

    (tmp_path / "Snakefile").write_text('rule ok:\n    output: "ok.txt"\n    shell: "echo ok > {output}"\n')
    result = run_wrapper(tmp_path, "--cores", "1")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout
    assert "Report: report/README.md" in result.stdout


@pytest.mark.parametrize("config, overrides, error", [
    ("bogus_key: 1\n", [], "config (top level): Additional properties are not allowed ('bogus_key' was unexpected)"),
    ("", ["--config", "baseline={training: {max_steps: 10"], "--config baseline: '{training: {max_steps: 10' is not "
     "valid YAML (expected ',' or '}', but got '<stream end>' at line 1 column 26)"),
])
def test_a_config_error_shows_the_key(tmp_path, config, overrides, error):
    """The pipeline's own Snakefile, stopped by its config before any job starts (a dry run)."""
    configfile = tmp_path / "config.yaml"
    configfile.write_text((REPO / "config/test.yaml").read_text() + config)
    result = run_wrapper(tmp_path, "--dry-run", "--configfile", str(configfile), *overrides,
                         snakefile=REPO / "Snakefile")
    assert result.returncode == 1
    assert f"snakemake failed (exit 1): ValueError: {error} (at {REPO / 'Snakefile'}, line " in result.stdout
