"""Where a run came from: the code (git), the locked environment, the libraries and the machine.

The lock is requirements/run-lock.txt of the checkout (`make lock` writes it): a run records its
name, its sha256 and whether the installed packages are the locked versions, so the report's
environment table says which lock a run was made with, and whether it was followed.
"""
from __future__ import annotations

import hashlib
import platform
import re
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import tinylm

if TYPE_CHECKING:
    import torch

    from tinylm.training.summary import Provenance

CHECKOUT = Path(tinylm.__file__).resolve().parents[2]
RUN_LOCK = CHECKOUT / "requirements" / "run-lock.txt"
TORCH_LINE = re.compile(r"^# (torch==\S+) is the torch of the resolution", re.MULTILINE)


def collect_provenance(device: torch.device, started_at: str | None) -> Provenance:
    import torch

    from tinylm.training.hardware import device_name
    from tinylm.training.summary import Provenance

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return Provenance(
        git_commit=commit, git_dirty=None if status is None else bool(status), lock=lock_provenance(),
        tinylm_version=tinylm.__version__, torch_version=torch.__version__,
        python_version=platform.python_version(), device_name=device_name(device),
        cuda_version=torch.version.cuda if device.type == "cuda" else None,
        hostname=socket.gethostname(), platform=platform.platform(), started_at=started_at,
        command=" ".join(sys.argv))


def _git(*args: str) -> str | None:
    """Output of a git command in the package's source tree; None outside a checkout or without git."""
    try:
        result = subprocess.run(["git", *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def lock_provenance(lock: Path = RUN_LOCK) -> str | None:
    """E.g. "run-lock.txt sha256:3a77b9a9cbf4, as locked"; None when the package runs outside its checkout."""
    if not lock.is_file():
        return None
    sha256, differences = lock_status(lock)
    state = "as locked" if not differences else "differs: " + "; ".join(differences[:3])
    return f"{lock.name} sha256:{sha256[:12]}, {state}"


def locked_requirements(text: str) -> list:
    """The requirements of a lock file (pip's requirements format: options and comments dropped),
    then the torch its header names."""
    from packaging.requirements import Requirement

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
    whose installed version is not the locked one, 'name installed (locked ==version)' (a local
    build label such as torch's +cpu still matches)."""
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
