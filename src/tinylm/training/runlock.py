"""One trainer per run: an exclusive lock on the checkpoint directory.

The lock is an advisory `flock` on CHECKPOINT_DIR/.lock, released by the kernel when its holder
exits however it exits (SIGKILL included), so a crashed run never leaves a stale lock behind. The
file records the holder's pid and host, which the refused second process names.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def run_lock(checkpoint_dir: str | os.PathLike) -> Iterator[int]:
    """Hold CHECKPOINT_DIR's lock for the block, which gets the lock file's descriptor (a child process
    that inherits it holds the lock too); FileExistsError naming the holder if it is taken."""
    path = Path(checkpoint_dir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:  # closing it releases the lock
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
        yield handle.fileno()
