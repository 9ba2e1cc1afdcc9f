"""A report page and the files it links to are written as one set: all new, or all as they were."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_set(out_dir: Path) -> Iterator[Path]:
    """A temporary folder inside `out_dir` to write a set of files into. When the block ends, each
    file replaces its namesake in `out_dir`; when the block fails, the folder is removed and
    `out_dir` keeps its old files as they were (a page never links to files of another run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        yield staging
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
