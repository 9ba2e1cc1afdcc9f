"""The lock of requirements/ (`make lock`): what `make run` and `make test` install.

Checks that the lock files cover pyproject.toml's ranges, agree with each other and with the Makefile's
torch, install no torch build (torch-lock.txt constrains it), and that the Makefile reinstalls when a
lock changes.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_LOCK = REPO_ROOT / "requirements" / "run-lock.txt"
TEST_LOCK = REPO_ROOT / "requirements" / "test-lock.txt"
TORCH_LOCK = REPO_ROOT / "requirements" / "torch-lock.txt"
MAKEFILE = (REPO_ROOT / "Makefile").read_text()
CUDA_BUILD_ONLY = re.compile(r"^(nvidia-|cuda-|triton$)")


def _load_check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", REPO_ROOT / "tools" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_lock = _load_check_lock()


def _locked(path: Path, torch: bool = False) -> dict[str, Requirement]:
    """The lock's requirements by name; torch (named in the header) only if asked for."""
    requirements = check_lock.locked_requirements(path.read_text())
    return {canonicalize_name(r.name): r for r in requirements if torch or r.name != "torch"}


def _makefile_list(name: str) -> list[str]:
    return re.search(rf"^{name} := ((?:.*\\\n)*.*)$", MAKEFILE, re.MULTILINE).group(1).replace("\\", " ").split()


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _locked_version(requirement: Requirement) -> str:
    (specifier,) = requirement.specifier
    assert specifier.operator == "==", requirement
    return specifier.version


def test_parses_hashes_markers_and_the_header_torch():
    text = ("# torch==2.13.0 is the torch of the resolution (the Makefile's TORCH_SPEC default)\n"
            "colorama==0.4.6 ; sys_platform == 'win32' \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
            "    # via\n    #   -c requirements/test-lock.txt\n    #   tqdm\n"
            "numpy==2.4.6 \\\n    --hash=sha256:cc\n    # via tinylm (pyproject.toml)\n")
    parsed = [str(r) for r in check_lock.locked_requirements(text)]
    assert parsed == ['colorama==0.4.6; sys_platform == "win32"', "numpy==2.4.6", "torch==2.13.0"]


@pytest.mark.parametrize("lock, extras", [(RUN_LOCK, ()), (TEST_LOCK, ("test",))])
def test_lock_pins_every_dependency_within_its_range(lock, extras):
    project = _pyproject()["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in extras for r in project["optional-dependencies"][extra]]
    locked = _locked(lock)
    for requirement in wanted:
        if requirement.name == "torch":  # installed from TORCH_SPEC; the header names the lock's
            continue
        pinned = locked.get(canonicalize_name(requirement.name))
        assert pinned is not None, f"{lock.name} lacks {requirement.name}: run make lock"
        assert requirement.specifier.contains(_locked_version(pinned), prereleases=True), (
            f"{lock.name}: {pinned} is outside pyproject.toml's {requirement}: run make lock")


def test_the_lock_torch_is_the_makefile_default():
    (torch,) = map(Requirement, _makefile_list("TORCH_LOCKED"))
    assert re.search(r"^TORCH_SPEC \?= \$\(TORCH_LOCKED\)$", MAKEFILE, re.MULTILINE)
    (ranged,) = [r for r in map(Requirement, _pyproject()["project"]["dependencies"]) if r.name == "torch"]
    assert ranged.specifier.contains(_locked_version(torch))
    for lock in (RUN_LOCK, TEST_LOCK):
        named = [str(r) for r in check_lock.locked_requirements(lock.read_text()) if r.name == "torch"]
        assert named == [str(torch)], lock.name
    assert str(_locked(TORCH_LOCK, torch=True)["torch"]) == str(torch)


def test_torch_lock_agrees_with_the_test_lock_and_names_the_cuda_packages():
    """torch-lock.txt constrains the torch install: the test lock's versions where they meet, no hashes
    (a cached CPU build keeps its own file), and every package the other locks leave out as CUDA's."""
    assert "--hash" not in TORCH_LOCK.read_text()
    torch_lock, test_lock = _locked(TORCH_LOCK), _locked(TEST_LOCK)
    shared = set(torch_lock) & set(test_lock)
    assert {"sympy", "filelock", "typing-extensions"} <= shared
    for name in shared:
        assert str(torch_lock[name]) == str(test_lock[name])
    cuda = _makefile_list("TORCH_CUDA_DEPS")
    assert cuda and set(cuda) <= set(torch_lock), "TORCH_CUDA_DEPS names a package torch no longer needs"
    assert {name for name in set(torch_lock) - shared if not CUDA_BUILD_ONLY.match(name)} == set()


def test_run_lock_is_the_test_lock_without_the_test_extra():
    run, test = RUN_LOCK.read_text(), TEST_LOCK.read_text()
    test_lines = {_requirement_line(block) for block in _blocks(test)}
    for block in _blocks(run):
        assert _requirement_line(block) in test_lines, f"{block.splitlines()[0]} differs in {TEST_LOCK.name}"
    assert set(_locked(TEST_LOCK)) > set(_locked(RUN_LOCK))


def _blocks(text: str) -> list[str]:
    """Each requirement of a lock with its hash lines (comments dropped)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#") and line.strip()]
    return [block for block in re.split(r"\n(?! )", "\n".join(lines)) if block]


def _requirement_line(block: str) -> str:
    """A requirement with its marker and hashes, hashes sorted."""
    head = block.splitlines()[0].rstrip(" \\")
    return " ".join([head, *sorted(re.findall(r"--hash=\S+", block))])


@pytest.mark.parametrize("lock", [RUN_LOCK, TEST_LOCK])
def test_lock_is_hashed_and_holds_no_torch_build(lock):
    blocks = _blocks(lock.read_text())
    assert len(blocks) == len(_locked(lock))
    for block in blocks:
        assert "--hash=sha256:" in block, f"{block.splitlines()[0]}: pip's hash-checking mode needs every hash"
    names = set(_locked(lock))
    assert "torch" not in names
    assert not {name for name in names if CUDA_BUILD_ONLY.match(name)}, (
        "a CUDA package in the lock: add torch's new dependency to TORCH_CUDA_DEPS (Makefile), run make lock")


@pytest.mark.parametrize("lock", [RUN_LOCK, TEST_LOCK])
def test_lock_header_says_where_and_how_it_was_made(lock):
    header = lock.read_text().split("\n\n", 1)[0]
    assert "Made by `make lock`" in header
    assert re.search(r"on Linux x86_64 with Python 3\.11\.\d+", header)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_a_changed_lock_reinstalls(tmp_path):
    """`make -n` with fresh stamps installs nothing; a newer lock file reinstalls what it locks."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    future = time.time() + 3600
    for stamp in (venv / "bin" / "python", venv / ".run-deps", venv / ".test-deps"):
        stamp.touch()
        os.utime(stamp, (future, future))

    def planned(*what_if: str, torch_spec: str | None = None) -> list[str]:
        command = ["make", "-n", "-C", str(REPO_ROOT), f"VENV={venv}", "test"]
        command += [f"--what-if={name}" for name in what_if]
        command += [f"TORCH_SPEC={torch_spec}"] if torch_spec else []
        # Under `make test`, MAKEFLAGS carries that make's variables (TORCH_SPEC=...): not these.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "TORCH_SPEC")}
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
        return [line for line in out.splitlines() if " install " in line]

    assert planned() == []
    test_only = planned("requirements/test-lock.txt")
    assert any("-r requirements/test-lock.txt" in line for line in test_only)
    assert not any("-r requirements/run-lock.txt" in line for line in test_only)
    both = planned("requirements/run-lock.txt")
    assert [line for line in both if " -r " in line] == [
        f"{venv}/bin/pip install -q -r requirements/run-lock.txt",
        f"{venv}/bin/pip install -q -r requirements/test-lock.txt"]
    assert planned("requirements/torch-lock.txt") == both
    # The lock's torch installs within torch-lock.txt; another TORCH_SPEC, as given.
    (torch,) = _makefile_list("TORCH_LOCKED")
    assert [line for line in both if "torch==" in line] == [
        f"{venv}/bin/pip install -q {torch} -c requirements/torch-lock.txt"] * 2
    other = f"{torch} --index-url https://download.pytorch.org/whl/cu128"
    assert [line for line in planned("requirements/run-lock.txt", torch_spec=other) if "torch==" in line] == [
        f"{venv}/bin/pip install -q {other}"] * 2
