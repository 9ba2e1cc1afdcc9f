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
import hashlib
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

TORCH_LINE = re.compile(r"^# (torch==\S+) is the torch of the resolution", re.MULTILINE)
NOT_LOCKED = {"pip", "tinylm", "torch"}  # the installer, the package itself, TORCH_SPEC's build


def locked_requirements(text: str) -> list[Requirement]:
    """The requirements of a lock file (pip's requirements format: options and comments dropped),
    then the torch its header names."""
    requirements = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        requirements.append(Requirement(re.sub(r"\s--hash=\S+", "", line).strip()))
    torch = TORCH_LINE.search(text)
    if torch:
        requirements.append(Requirement(torch.group(1)))
    return requirements


def lock_status(lock: Path) -> tuple[str, list[str]]:
    """The lock file's sha256 and, for each locked package that applies here (its marker holds)
    whose installed version is not the locked one, 'name installed (locked ==version)'."""
    data = lock.read_bytes()
    differences = []
    for requirement in locked_requirements(data.decode()):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed == "missing" or not requirement.specifier.contains(installed, prereleases=True):
            differences.append(f"{requirement.name} {installed} (locked {requirement.specifier})")
    return hashlib.sha256(data).hexdigest(), differences


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
