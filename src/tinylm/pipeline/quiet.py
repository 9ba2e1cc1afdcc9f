"""Run Snakemake quietly: a progress summary on the terminal, its full output in a log file.

    python -m tinylm.pipeline.quiet --log results/logs/snakemake.log --report results/report/README.md \
        -- --cores all ...

Everything after `--` goes to `snakemake`. The terminal shows jobs done out of the total, the rules
running now and the elapsed time (one line redrawn in place on a terminal, a line per finished job
otherwise), each failed job with its rule, its log's path and the one line that says what went
wrong, and at the end where the report is. The exit status is Snakemake's.

The line that says what went wrong is, of a failed job, the first of:
1. the last line of its log that names an error (a `tinylm` command's one-line error, say);
2. the error Snakemake caught in the rule's own code (a `run:` block that raised, an output that
   never appeared), which goes to Snakemake's output, not to the log;
3. of a job without a `log:`, the last line naming an error that it printed on Snakemake's output
   (a shell command's stderr);
4. how its shell command ended (exit status, signal), with the last line of its log or output.
Jobs running side by side share Snakemake's output, so (3) can be a neighbour's line, and (2) is
told apart by order alone (Snakemake prints a job's exception just before its error block), which
two jobs failing at the same instant can mix up. When Snakemake stops before any job fails (a config
error, a Snakefile that does not parse, a missing input), the line is Snakemake's own error: for a
config error, the one naming the key.
"""
from __future__ import annotations

import argparse
import queue
import re
import signal
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
JOB_LOG = re.compile(r"^\s+log: (.+?)(?: \(check log file\(s\) for error details\))?$")
BLOCK_LINE = re.compile(r"^\s{4}")  # the settings under a job's or an error's first line
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")
STEPS = re.compile(r"^(\d+) of (\d+) steps \(\d+%\) done$")
TOTAL = re.compile(r"^total\s+(\d+)$")
ERROR_IN_RULE = re.compile(r"^Error in rule (\w+):$")
WORKDIR = re.compile(r"^\s*Working directory: (.+)$")  # job log paths are relative to it
NOTHING_TO_DO = "Nothing to be done"
# An exception as Snakemake prints it: its class, where it arose, then its message on the lines below
# (a bare "Error:" is not one: an InputFunctionException's message starts with it).
EXCEPTION = re.compile(r'^(?!Error:$)(\w*(?:Error|Exception))(?: in rule (\w+))?(?: in file "(.+)", line (\d+))?'
                       r"([:.])$")
TRACEBACK = re.compile(r'^\s*(?:File ".*", line \d+|Traceback:?$)')
TIMESTAMP = re.compile(r"^\[\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}\]$")
# --show-failed-logs copies a failed job's log between two rulers: the log is read from its file instead.
LOGFILE = re.compile(r"^Logfile .+:( empty file)?$")
RULER = re.compile(r"^=+$")
# Snakemake's own lines about the run, never what a job printed.
STATUS = re.compile(r"^(?:Select jobs to execute|Execute \d+ jobs|Shell command: |Exiting because|Shutting down|"
                    r"Complete log|Elapsed time|Removing output files of failed job|Will exit after finishing|"
                    r"Trying to restart job|Waiting at most|Touching output file)")
EVERY_JOB = "At least one job did not complete successfully."  # follows each failure: says nothing new
SHELL_EXIT = re.compile(r"^Command '.*' returned non-zero exit status (\d+)\.$", re.S)
SHELL_SIGNAL = re.compile(r"^Command '.*' died with <Signals\.(\w+): \d+>\.$", re.S)
# The line of a failed job's log that says what went wrong: the CLI's one-line errors first.
ERROR_LINE = re.compile(r"error|exception|traceback|killed|no such file|not found", re.I)
PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's bars say how far a job got, not why it stopped
LONGEST_REASON = 400


def fmt_elapsed(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


def shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LONGEST_REASON else text[:LONGEST_REASON] + "..."


def meaningful(line: str) -> bool:
    return bool(line.strip()) and not PROGRESS_BAR.search(line)


def last_error_line(lines: Iterable[str]) -> str | None:
    return next((line for line in reversed(list(lines)) if ERROR_LINE.search(line)), None)


def log_lines(path: Path) -> list[str] | None:
    """The meaningful lines of a job's log; None when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return [line.strip() for line in text.splitlines() if meaningful(line)]


@dataclass
class Job:
    rule: str
    logs: list[Path] = field(default_factory=list)
    first_error: int = 0               # how many Snakemake errors came before it started
    error_line: str | None = None      # of what it printed on Snakemake's output: the last line naming an error
    last_line: str | None = None       # ... and the last line

    def printed(self, line: str) -> None:
        line = line.strip()
        self.last_line = line
        if ERROR_LINE.search(line):
            self.error_line = line


@dataclass
class SnakemakeError:
    """An exception Snakemake printed: its class, the place it names, and its message."""

    kind: str
    where: str | None = None           # 'FILE, line N'
    message: list[str] = field(default_factory=list)
    claimed: bool = False               # a failed job's error already

    @property
    def says_nothing_new(self) -> bool:
        return self.kind == "WorkflowError" and " ".join(self.message).strip() == EVERY_JOB

    @property
    def shell_ended(self) -> bool:
        """Whether it only says how a shell command ended (the command's own output says why)."""
        return self.kind == "CalledProcessError"

    def text(self) -> str:
        message = " ".join(line.strip() for line in self.message)
        if match := SHELL_EXIT.match(message):
            status = int(match[1])
            killed = f" ({signal.Signals(status - 128).name})" if status - 128 in signal.valid_signals() else ""
            return f"its shell command exited with status {status}{killed}"
        if match := SHELL_SIGNAL.match(message):
            return f"its shell command was killed by {match[1]}"
        return shorten(f"{self.kind}: {message}" if message else self.kind)


@dataclass
class Failure:
    rule: str
    job: Job | None = None
    error: SnakemakeError | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def log(self) -> Path | None:
        return self.logs[0] if self.logs else None

    def reason(self) -> str:
        """The line that says what went wrong (the order is the module's docstring's)."""
        contents = [log_lines(path) for path in self.logs]
        logged = [line for lines in contents if lines for line in lines]
        printed = self.job if not self.logs else None  # without a log, what a job printed is all it said
        error = self.error
        said = last_error_line(logged) or (error.text() if error and not error.shell_ended else None) \
            or (printed.error_line if printed else None)
        if said:
            return shorten(said)
        ended = error.text() if error else None
        last = logged[-1] if logged else (printed.last_line if printed else None)
        if ended and last:
            return shorten(f"{ended}; the last line of its {'log' if logged else 'output'}: {last}")
        either = ended or last
        if either:
            return shorten(either)
        if self.logs:
            return "(the log is empty)" if contents[0] is not None else f"(no log at {self.logs[0]})"
        return "see the Snakemake log"


@dataclass
class SnakemakeProgress:
    """What the Snakemake output has said so far."""

    total: int | None = None
    done: int = 0
    running: dict[str, Job] = field(default_factory=dict)   # job id -> job
    failures: list[Failure] = field(default_factory=list)
    errors: list[SnakemakeError] = field(default_factory=list)
    nothing_to_do: bool = False
    workdir: Path | None = None
    _job: Job | None = None              # the job block being read
    _failed: Failure | None = None       # the error block being read
    _error: SnakemakeError | None = None  # the exception whose message is being read
    _rulers: int | None = None           # in a copied log: the rulers seen

    def read(self, line: str) -> str | None:
        """Take one output line; return "finished" or "failed" when a job has just ended."""
        line = line.rstrip("\n")
        if self._skip_copied_log(line) or self._read_error_message(line):
            return None
        if self._job is not None or self._failed is not None:
            if BLOCK_LINE.match(line):
                return self._read_block(line)
            self._job = self._failed = None
        if match := RULE_START.match(line):
            self._job = Job(match[1], first_error=len(self.errors))
        elif match := ERROR_IN_RULE.match(line):
            self._failed = Failure(match[1])
            self.failures.append(self._failed)
        elif match := FINISHED.match(line):
            self.running.pop(match[1], None)
        elif match := STEPS.match(line):  # follows each "Finished jobid" line
            self.done, self.total = int(match[1]), int(match[2])
            return "finished"
        elif (match := TOTAL.match(line)) and self.total is None:
            self.total = int(match[1])
        elif match := EXCEPTION.match(line):
            return self._start_error(match)
        elif match := WORKDIR.match(line):
            self.workdir = Path(match[1])
        elif NOTHING_TO_DO in line:
            self.nothing_to_do = True
        elif meaningful(line) and not (TIMESTAMP.match(line) or STATUS.match(line) or TRACEBACK.match(line)):
            for job in self.running.values():
                job.printed(line)
        return None

    def _skip_copied_log(self, line: str) -> bool:
        if self._rulers is not None:
            if RULER.match(line):
                self._rulers += 1
            if self._rulers == 2:
                self._rulers = None
            return True
        if match := LOGFILE.match(line):
            self._rulers = None if match[1] else 0
            return True
        return False

    def _read_error_message(self, line: str) -> bool:
        """Take `line` as the message of the exception being read, if it is; its end ends the exception."""
        if self._error is None:
            return False
        ends = (not line.strip() or EXCEPTION.match(line) or TRACEBACK.match(line) or TIMESTAMP.match(line)
                or STATUS.match(line) or ERROR_IN_RULE.match(line) or RULE_START.match(line))
        if not ends:
            self._error.message.append(line)
            return True
        error, self._error = self._error, None
        if error.kind == "RuleException" and not error.message and EXCEPTION.match(line):
            return False  # it wraps the error on this line, which stands for it
        if not error.says_nothing_new:
            self.errors.append(error)
        return False

    def _start_error(self, match: re.Match) -> str | None:
        kind, rule, file, number, end = match.groups()
        error = SnakemakeError(kind, f"{file}, line {number}" if file else None)
        if end == ":":
            self._error = error
        else:
            self.errors.append(error)
        if rule is None or self.total is None:  # before the jobs start, Snakemake may warn of a rule and go on
            return None
        # An error in a rule that no error block follows (an output missing after the job, say).
        jobs = [job_id for job_id, job in self.running.items() if job.rule == rule]
        job = self.running.pop(jobs[0]) if len(jobs) == 1 else None
        error.claimed = True
        self.failures.append(Failure(rule, job, error, job.logs if job else []))
        return "failed"

    def _read_block(self, line: str) -> str | None:
        if match := JOB_ID.match(line):
            if self._failed is not None:  # every error block names its job
                failed, job = self._failed, self.running.pop(match[1], None)
                failed.job, failed.logs = job, failed.logs or (job.logs if job else [])
                failed.error = self._claim_error(job)
                return "failed"
            if self._job is not None:
                self.running[match[1]] = self._job
        elif match := JOB_LOG.match(line):
            logs = [self._path(text) for text in match[1].split(", ")]
            if self._failed is not None:
                self._failed.logs = logs
            elif self._job is not None:
                self._job.logs = logs
        return None

    def _claim_error(self, job: Job | None) -> SnakemakeError | None:
        """The error Snakemake printed for a failed job: the latest one since it started that no
        other failure has (Snakemake prints a job's exception just before its error block)."""
        start = job.first_error if job is not None else len(self.errors)
        error = next((e for e in reversed(self.errors[start:]) if not e.claimed), None)
        if error is not None:
            error.claimed = True
        return error

    def _path(self, text: str) -> Path:
        path = Path(text)
        if self.workdir is not None and not path.is_absolute() and self.workdir.resolve() != Path.cwd():
            path = self.workdir / path
        return path

    def stopped_because(self) -> str | None:
        """Why Snakemake stopped, when no job failed: its last error, with where it arose."""
        error = next((e for e in reversed(self.errors) if not e.claimed), None)
        if error is None:
            return None
        return error.text() + (f" (at {error.where})" if error.where else "")

    def end(self) -> None:
        """The output has ended: an exception still being read is complete."""
        self._read_error_message("")

    def summary(self, elapsed: float) -> str:
        total = "?" if self.total is None else str(self.total)
        text = f"[{fmt_elapsed(elapsed)}] {self.done}/{total} jobs done"
        if self.running:
            counts = Counter(job.rule for job in self.running.values())
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
    progress.end()
    log.flush()
    if interactive and width:
        out.write("\n")
    return progress


def last_words(log_path: Path) -> str:
    """Snakemake's last line naming an error, else its last line: for a failure it did not print as
    an exception (its own command line refused, say)."""
    lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
             if meaningful(line) and not STATUS.match(line)]
    return last_error_line(lines) or (lines[-1] if lines else "no output")


def finish(progress: SnakemakeProgress, returncode: int, log_path: Path, report: Path | None, out: IO[str]) -> None:
    """The closing lines: each failure's rule, log and reason, or where the report is."""
    for failure in progress.failures:
        where = f" (log: {failure.log})" if failure.log else ""
        out.write(f"FAILED rule {failure.rule}{where}: {failure.reason()}\n")
    if returncode != 0 and not progress.failures:
        out.write(f"snakemake failed (exit {returncode}): {progress.stopped_because() or last_words(log_path)}\n")
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
            assert snakemake.stdout is not None  # stdout=PIPE
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
