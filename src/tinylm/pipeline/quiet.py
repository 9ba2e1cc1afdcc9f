"""Run Snakemake quietly: a progress summary on the terminal, its full output in a log file.

    python -m tinylm.pipeline.quiet --log results/logs/snakemake.log --report results/report/README.md \
        -- --cores all ...

Everything after `--` goes to `snakemake`. The terminal shows jobs done out of the total, the rules
running now and the elapsed time (one line redrawn in place on a terminal, a line per finished job
otherwise), each failed job with the one line of its log that matters and the log's path, and at
the end where the report is. The exit status is Snakemake's.
"""
from __future__ import annotations

import argparse
import queue
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

RULE_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
JOB_ID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")
STEPS = re.compile(r"^(\d+) of (\d+) steps \(\d+%\) done$")
TOTAL = re.compile(r"^total\s+(\d+)$")
ERROR_IN_RULE = re.compile(r"^Error in rule (\w+):$")
ERROR_LOG = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?$")
WORKDIR = re.compile(r"^\s*Working directory: (.+)$")  # job log paths are relative to it
NOTHING_TO_DO = "Nothing to be done"
# The line of a failed job's log that says what went wrong: the CLI's one-line errors first.
ERROR_LINE = re.compile(r"error|exception|traceback|killed|no such file|not found", re.I)
PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's bars say how far a job got, not why it stopped


def fmt_elapsed(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def reason_in_log(path: Path) -> str:
    """The line of a job's log that explains its failure: the last line naming an error, else the
    last non-empty line."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return f"(no log at {path})"
    lines = [line for line in lines if line and not PROGRESS_BAR.search(line)]
    if not lines:
        return "(the log is empty)"
    errors = [line for line in lines if ERROR_LINE.search(line)]
    return (errors or lines)[-1]


@dataclass
class Failure:
    rule: str
    log: Path | None = None


@dataclass
class SnakemakeProgress:
    """What the Snakemake output has said so far."""

    total: int | None = None
    done: int = 0
    running: dict[str, str] = field(default_factory=dict)   # job id -> rule
    failures: list[Failure] = field(default_factory=list)
    nothing_to_do: bool = False
    workdir: Path | None = None
    _rule: str | None = None        # the rule of the job block being read
    _failed: Failure | None = None  # the error block being read

    def read(self, line: str) -> str | None:
        """Take one output line; return "finished" or "failed" when a job has just ended."""
        line = line.rstrip("\n")
        if match := RULE_START.match(line):
            self._rule, self._failed = match[1], None
        elif (match := JOB_ID.match(line)) and self._rule is not None:
            self.running[match[1]] = self._rule
            self._rule = None
        elif match := FINISHED.match(line):
            self.running.pop(match[1], None)
        elif match := STEPS.match(line):  # follows each "Finished jobid" line
            self.done, self.total = int(match[1]), int(match[2])
            return "finished"
        elif (match := TOTAL.match(line)) and self.total is None:
            self.total = int(match[1])
        elif match := ERROR_IN_RULE.match(line):
            self._rule, self._failed = None, Failure(match[1])
            self.failures.append(self._failed)
        elif self._failed is not None and (match := JOB_ID.match(line)):  # every error block names its job
            self.running.pop(match[1], None)
            return "failed"
        elif self._failed is not None and (match := ERROR_LOG.match(line)):
            log = Path(match[1].split(", ")[0])
            if self.workdir is not None and not log.is_absolute() and self.workdir.resolve() != Path.cwd():
                log = self.workdir / log
            self._failed.log = log
            self._failed = None
        elif match := WORKDIR.match(line):
            self.workdir = Path(match[1])
        elif NOTHING_TO_DO in line:
            self.nothing_to_do = True
        return None

    def summary(self, elapsed: float) -> str:
        total = "?" if self.total is None else str(self.total)
        text = f"[{fmt_elapsed(elapsed)}] {self.done}/{total} jobs done"
        if self.running:
            counts = Counter(self.running.values())
            text += "; running: " + ", ".join(f"{rule} x{n}" if n > 1 else rule for rule, n in sorted(counts.items()))
        if self.failures:
            text += f"; {len(self.failures)} failed"
        return text


def ticking(stream: IO[str], interval: float) -> Iterator[str | None]:
    """The lines of `stream`, with None whenever `interval` seconds pass without one (so that the
    elapsed time keeps moving while a long job prints nothing)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)  # end of output

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=interval)
        except queue.Empty:
            yield None
            continue
        if line is None:
            return
        yield line


def follow(lines: Iterable[str | None], log: IO[str], out: IO[str], clock=time.monotonic,
           interactive: bool = False, heartbeat_s: float = 60.0) -> SnakemakeProgress:
    """Copy Snakemake's output (None: a tick without output) to `log` and show progress on `out`.

    On a terminal one summary line is redrawn at every line and tick; otherwise a summary line is
    printed when a job ends, and at most every `heartbeat_s` seconds while nothing ends."""
    progress, start = SnakemakeProgress(), clock()
    width, last_shown = 0, start

    def show(text: str, final: bool = False) -> None:
        nonlocal width, last_shown
        if interactive:
            out.write("\r" + text.ljust(width) + ("\n" if final else ""))
            width = 0 if final else len(text)
        else:
            out.write(text + "\n")
        out.flush()
        last_shown = clock()

    for line in lines:
        event = None
        if line is not None:
            log.write(line)
            event = progress.read(line)
        if event == "failed":
            show(f"failed: rule {progress.failures[-1].rule}", final=True)
        if event is not None or interactive or clock() - last_shown >= heartbeat_s:
            show(progress.summary(clock() - start))
    log.flush()
    if interactive and width:
        out.write("\n")
    return progress


def finish(progress: SnakemakeProgress, returncode: int, log_path: Path, report: Path | None, out: IO[str]) -> None:
    """The closing lines: each failure's reason and log, or where the report is."""
    for failure in progress.failures:
        where = f" (log: {failure.log})" if failure.log else ""
        reason = reason_in_log(failure.log) if failure.log else "see the Snakemake log"
        out.write(f"FAILED rule {failure.rule}{where}: {reason}\n")
    if returncode != 0 and not progress.failures:
        tail = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        errors = [line for line in tail if ERROR_LINE.search(line)]
        out.write(f"snakemake failed (exit {returncode}): {(errors or tail or ['no output'])[-1].strip()}\n")
    if progress.nothing_to_do:
        out.write("Nothing to be done: every result is up to date.\n")
    if returncode == 0 and report is not None:
        out.write(f"Report: {report}\n")
    out.write(f"Full Snakemake output: {log_path}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinylm.pipeline.quiet", description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, default=Path("results/logs/snakemake.log"),
                        help="where Snakemake's full output goes")
    parser.add_argument("--report", type=Path, help="the report to point at when the run succeeds")
    parser.add_argument("snakemake_args", nargs=argparse.REMAINDER,
                        help="after --: the arguments of snakemake")
    args = parser.parse_args(argv)
    snakemake_args = args.snakemake_args[1:] if args.snakemake_args[:1] == ["--"] else args.snakemake_args
    args.log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "snakemake", *snakemake_args]
    with open(args.log, "w", encoding="utf-8") as log, \
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                             errors="replace") as snakemake:
        try:
            progress = follow(ticking(snakemake.stdout, 1.0), log, sys.stdout, interactive=sys.stdout.isatty())
        except KeyboardInterrupt:  # Snakemake got the same SIGINT and stops its jobs
            snakemake.wait()
            print(f"\ninterrupted; full Snakemake output: {args.log}")
            return 130
        returncode = snakemake.wait()
    finish(progress, returncode, args.log, args.report, sys.stdout)
    return returncode


if __name__ == "__main__":
    sys.exit(main())
