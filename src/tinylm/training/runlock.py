"""One trainer per run: an exclusive lock on the checkpoint directory, and a clean start.

The lock is an advisory `flock` on CHECKPOINT_DIR/.lock, released by the kernel when its holder
exits however it exits (SIGKILL included), so a crashed run never leaves a stale lock behind. The
file records the holder's pid and host, which the refused second process names.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

# What a finished run leaves in its out dir; a run starting from scratch removes them first, so an
# older run's summary can never be read as this one's.
RUN_OUTPUTS = ("summary.json", "model.pt", "metrics.jsonl", "eval.json")


@contextlib.contextmanager
def run_lock(checkpoint_dir: str | os.PathLike) -> Iterator[None]:
    """Hold CHECKPOINT_DIR's lock for the block; FileExistsError naming the holder if it is taken."""
    path = Path(checkpoint_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FileExistsError(f"checkpoint directory {str(path.parent)!r} is in use by {holder}; "
                                  "one trainer per run") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def remove_stale_outputs(out_dir: str | os.PathLike) -> list[str]:
    """Delete an earlier run's results from `out_dir`; returns the names removed."""
    removed = []
    for name in RUN_OUTPUTS:
        path = Path(out_dir) / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed
