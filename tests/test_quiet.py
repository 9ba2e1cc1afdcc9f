"""The quiet `make run` wrapper: progress from Snakemake's output, failures with their reason."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from tinylm.pipeline.quiet import SnakemakeProgress, follow, reason_in_log

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
    assert progress.total == 4 and progress.running == {"2": "a"}
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


def test_reason_is_the_last_error_line_of_the_log(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("downloading\ntinylm download: error: cannot get 'x.txt'\nbye\n\n")
    assert reason_in_log(log) == "tinylm download: error: cannot get 'x.txt'"
    log.write_text("starting\nrun:  77%|███████▋  | 232/300 [02:17<00:40,  1.69step/s]\n")
    assert reason_in_log(log) == "starting"  # a progress bar is not a reason
    log.write_text("just this\n")
    assert reason_in_log(log) == "just this"
    assert "no log" in reason_in_log(tmp_path / "missing.log")


def run_wrapper(workdir: Path, *snakemake_args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tinylm.pipeline.quiet", "--log", str(workdir / "smk.log"), "--report",
               "report/README.md", "--", "--snakefile", str(workdir / "Snakefile"), "--directory", str(workdir),
               "--cores", "1", *snakemake_args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_wrapper_runs_snakemake_and_reports_the_failure(tmp_path):
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    input: "ok.txt", "bad.txt"\n'
        'rule ok:\n    output: "ok.txt"\n    shell: "echo ok > {output}"\n'
        'rule bad:\n    output: "bad.txt"\n    log: "logs/bad.log"\n'
        '    shell: "echo \'tinylm train: error: data.train_tokens: no such file\' > {log}; exit 2"\n')
    result = run_wrapper(tmp_path)
    assert result.returncode != 0
    expected = (f"FAILED rule bad (log: {tmp_path / 'logs/bad.log'}): "
                "tinylm train: error: data.train_tokens: no such file")
    assert expected in result.stdout
    assert "Report:" not in result.stdout and f"Full Snakemake output: {tmp_path / 'smk.log'}" in result.stdout
    assert "Error in rule bad" in (tmp_path / "smk.log").read_text()
    assert "Error in rule bad" not in result.stdout  # the job text stays in the log

    (tmp_path / "Snakefile").write_text('rule ok:\n    output: "ok.txt"\n    shell: "echo ok > {output}"\n')
    result = run_wrapper(tmp_path)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout
    assert "Report: report/README.md" in result.stdout
