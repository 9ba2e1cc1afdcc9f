"""Faults at the pipeline level: killed and preempted training, divergence, crashes, two invocations
at once, interrupted downloads and tokenization. Each test runs the real Snakefile in its own copy of
a working directory where the data stages are already done, on config/test.yaml with a longer
baseline run (so there is time to interrupt it) and compares with an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from cluster.workflow import INTERRUPTIBLE_TRAINING as TRAINING
from cluster.workflow import assert_same_results, run_snakemake, snakemake_command, write_config
from local_http import LocalHTTPServer, QuietHandler

pytestmark = pytest.mark.slow

RUN_DIR = "results/runs/baseline"
SUMMARY = f"{RUN_DIR}/summary.json"
RUN_RESULTS = [f"{RUN_DIR}/{name}" for name in ("metrics.jsonl", "summary.json", "config.json", "model.pt")]
CHECKPOINT = "results/checkpoints/baseline/checkpoint.pt"
TRAIN_LOG = "results/logs/train/baseline.log"
DOWNLOAD = "results/downloads/tinystories/train.txt"
TOKENS = "results/tokens/tinystories/tinystories/train.npy"
DATA_TARGETS = (TOKENS, "results/tokens/tinystories/tinystories/valid.npy")
TIMEOUT_S = 120


class Pipeline:
    """A snakemake process in the background, in its own process group."""

    def __init__(self, workdir: Path, config: Path, *targets: str):
        self.out = open(workdir / "snakemake.out", "a")  # noqa: SIM115 (the process's output, closed in wait())
        self.process = subprocess.Popen(snakemake_command(workdir, config, "--cores", "2", *targets),
                                        stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_for(self, condition, what: str):
        """Poll `condition` until it returns something true, while snakemake runs; return that."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if value := condition():
                return value
            if self.process.poll() is not None:
                raise AssertionError(f"snakemake ended ({self.process.returncode}) before {what}")
            time.sleep(0.01)
        raise AssertionError(f"timed out after {TIMEOUT_S} s waiting for {what}")

    def job(self, command: str) -> psutil.Process | None:
        """The running `tinylm COMMAND` process started by this snakemake, if any."""
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                cmdline = child.cmdline()
                if "tinylm" in " ".join(cmdline[:2]) and command in cmdline:
                    return child
        except psutil.NoSuchProcess:
            pass
        return None

    def wait(self) -> int:
        try:
            return self.process.wait(TIMEOUT_S)
        finally:
            self.out.close()

    def kill_all(self) -> None:
        """SIGKILL snakemake and every job it started, as a crash of the machine would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.wait()


def copy_workdir(source: Path, dest: Path) -> Path:
    """A copy with file times kept, so Snakemake sees the same up-to-date outputs."""
    shutil.copytree(source, dest, symlinks=True)
    (dest / "snakemake.out").unlink(missing_ok=True)
    return dest


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return write_config(tmp_path_factory.mktemp("config") / "config.yaml", training=TRAINING)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, config) -> Path:
    """A working directory with the tokenizer and token arrays of the baseline run already made."""
    workdir = tmp_path_factory.mktemp("prepared")
    result = run_snakemake(workdir, config, "--cores", "2", *DATA_TARGETS)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prepared, config) -> Path:
    workdir = copy_workdir(prepared, tmp_path_factory.mktemp("uninterrupted") / "work")
    result = run_snakemake(workdir, config, "--cores", "2", SUMMARY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((workdir / SUMMARY).read_text())["status"] == "completed"
    return workdir


def last_logged_step(workdir: Path) -> int:
    """The step of the last complete line of the run's metrics.jsonl (0 before the first)."""
    path = workdir / RUN_DIR / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    complete = [line for line in lines if line.endswith("}")]
    return json.loads(complete[-1])["step"] if complete else 0


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_training_resumes_on_rerun(prepared, uninterrupted, config, tmp_path, signum):
    workdir = copy_workdir(prepared, tmp_path / "work")
    pipeline = Pipeline(workdir, config, SUMMARY)
    trainer = pipeline.wait_for(lambda: (workdir / CHECKPOINT).exists() and pipeline.job("train"),
                                "a periodic checkpoint")
    logged = last_logged_step(workdir)
    trainer.send_signal(signum)
    assert pipeline.wait() != 0, "the interrupted training job should fail this invocation"
    assert not (workdir / SUMMARY).exists()
    assert logged < TRAINING["max_steps"], "training finished before it could be interrupted"

    rerun = run_snakemake(workdir, config, "--cores", "2", SUMMARY)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = re.search(r"resuming baseline from \S+ at step (\d+)", (workdir / TRAIN_LOG).read_text())
    assert resumed, "the rerun started over instead of resuming from the checkpoint"
    step = int(resumed[1])
    if signum == signal.SIGTERM:  # preemption: a checkpoint is saved on the signal, nothing is lost
        assert step >= logged
    else:  # a kill loses the steps since the last periodic checkpoint, no more
        assert step % TRAINING["checkpoint_interval"] == 0
        assert step > 0 and step >= logged - logged % TRAINING["checkpoint_interval"]
    assert_same_results(workdir, uninterrupted, RUN_RESULTS)


def test_diverging_run_does_not_fail_the_workflow(prepared, tmp_path):
    workdir = copy_workdir(prepared, tmp_path / "work")
    diverging = write_config(tmp_path / "diverging.yaml", optimizer={"lr": 100.0, "warmup_steps": 0},
                             training={**TRAINING, "max_steps": 100})
    result = run_snakemake(workdir, diverging, "--cores", "2", SUMMARY, f"{RUN_DIR}/eval.json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workdir / SUMMARY).read_text())
    assert summary["status"] == "diverged" and summary["diverged_at_step"] is not None


def test_crashing_job_is_retried_then_reported_with_its_log(prepared, config, tmp_path):
    workdir = copy_workdir(prepared, tmp_path / "work")
    # A bug's stand-in: token ids far beyond the vocabulary. The file times are kept, so Snakemake
    # does not rebuild the array and the training job itself fails every time.
    tokens = workdir / TOKENS
    times = tokens.stat()
    np.save(tokens, np.full(np.load(tokens).shape, 60000, dtype=np.uint16))
    os.utime(tokens, ns=(times.st_atime_ns, times.st_mtime_ns))

    result = run_snakemake(workdir, config, "--cores", "2", "--retries", "2", SUMMARY)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("Error in rule train:") == 3, "one first attempt and two retries"
    assert output.count("Trying to restart job") == 2
    assert f"log: {TRAIN_LOG}" in output
    assert (workdir / TRAIN_LOG).stat().st_size > 0


def test_second_invocation_refuses_while_the_first_runs(prepared, uninterrupted, config, tmp_path):
    workdir = copy_workdir(prepared, tmp_path / "work")
    first = Pipeline(workdir, config, SUMMARY)
    trainer = first.wait_for(lambda: first.job("train"), "the training job")
    trainer.suspend()  # so the first invocation surely still runs while the second one starts
    try:
        second = run_snakemake(workdir, config, "--cores", "2", SUMMARY, timeout=60)
    finally:
        trainer.resume()
    assert second.returncode != 0
    assert "cannot be locked" in second.stdout + second.stderr
    assert first.wait() == 0, (workdir / "snakemake.out").read_text()[-3000:]
    assert_same_results(workdir, uninterrupted, RUN_RESULTS)
    again = run_snakemake(workdir, config, "--cores", "2", SUMMARY)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


class SlowServer:
    """Serves one file over HTTP on 127.0.0.1, slowly (so a transfer can be interrupted), with Range."""

    def __init__(self, body: bytes, chunk: int = 4096, pause_s: float = 0.02):
        self.sent = 0
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").split("-")[0])
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                try:
                    for offset in range(start, len(body), chunk):
                        self.wfile.write(body[offset:offset + chunk])
                        server.sent += chunk
                        time.sleep(pause_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed

        self.http = LocalHTTPServer(Handler)
        self.url = f"{self.http.base_url}/train.txt"
        self.close = self.http.close


def test_interrupted_download_and_tokenization_leave_no_output(prepared, config, sample_data, tmp_path):
    server = SlowServer((sample_data / "tinystories" / "train.txt").read_bytes())
    try:
        text = config.read_text().replace("data/tinystories/train.txt.gz", server.url)  # config/test.yaml's source
        assert server.url in text
        served = tmp_path / "served.yaml"
        served.write_text(text)
        workdir = tmp_path / "work"
        workdir.mkdir()

        # Everything killed mid-transfer (the output open under its temporary name).
        pipeline = Pipeline(workdir, served, *DATA_TARGETS)
        pipeline.wait_for(lambda: server.sent > 65536 and list((workdir / DOWNLOAD).parent.glob(".train.txt.tmp-*")),
                          "the download to be under way")
        pipeline.kill_all()
        assert not (workdir / DOWNLOAD).exists()

        # Again, killed while the training split is being tokenized.
        assert run_snakemake(workdir, served, "--unlock").returncode == 0
        pipeline = Pipeline(workdir, served, *DATA_TARGETS)
        pipeline.wait_for(lambda: list((workdir / TOKENS).parent.glob(".train.npy.parts-*")),
                          "the tokenization to be under way")
        pipeline.kill_all()
        assert not (workdir / TOKENS).exists()

        assert run_snakemake(workdir, served, "--unlock").returncode == 0
        result = run_snakemake(workdir, served, "--cores", "2", *DATA_TARGETS)
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        server.close()
    assert_same_results(workdir, prepared, [DOWNLOAD, *DATA_TARGETS])
