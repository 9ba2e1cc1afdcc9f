"""Compare the Python environment running this script with a lock file of requirements/.

    .venv/bin/python tools/check_lock.py requirements/run-lock.txt [--exact]

Prints the lock's sha256 and every locked package whose installed version differs from the lock
(or is missing), torch included (the lock names it in its header: `# torch==X is the torch of the
resolution`; a local build label such as +cpu still matches). With --exact, packages installed
but not in the lock count as differences too, apart from pip, tinylm itself and torch: then the
environment is `pip freeze` equal to the lock. Exits 1 when anything differs.
"""
from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

from tinylm.training.provenance import lock_status, locked_requirements

NOT_LOCKED = {"pip", "tinylm", "torch"}  # the installer, the package itself, TORCH_SPEC's build


def unlocked_distributions(lock: Path) -> list[str]:
    """Installed distributions the lock does not name, apart from NOT_LOCKED."""
    locked = {canonicalize_name(r.name) for r in locked_requirements(lock.read_text())}
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    return sorted(f"{name} {version} (not locked)" for name, version in installed.items()
                  if name not in locked | NOT_LOCKED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--exact", action="store_true", help="packages installed but not locked differ too")
    args = parser.parse_args(argv)
    sha256, differences = lock_status(args.lock)
    if args.exact:
        differences += unlocked_distributions(args.lock)
    print(f"{args.lock} sha256:{sha256}")
    for line in differences:
        print(f"  differs: {line}")
    if not differences:
        print(f"  as locked ({sys.executable}, Python {sys.version.split()[0]})")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
