"""Every file tinylm reads or writes: readers that fail in one line naming the file, and writers
that never leave a half-written file.

Reading: token arrays, checkpoints, run configs, summaries and tokenizer files come from earlier
jobs, other machines and users: any of them may be missing, empty, truncated, of another format or
hostile. Every reader here raises FileNotFoundError (no such file) or ValueError (anything wrong
with it) whose message is `<what> '<path>': <what is wrong>`, never a library's traceback or its
advice to load the file unsafely. Checkpoints are unpickled by torch's weights-only unpickler only,
so a file that would run code when loaded is refused before anything in it runs.

Writing: a result appears under its final name only once it is complete (a temporary name, then a
rename), so an interrupted job never leaves a half-written file that a later run (or Snakemake)
would take as done. An output folder can be checked before anything is written (`check_folder`),
so a command refuses a bad one naming its option, and `os_error_text` words any other failed
system call as `'<path>': <what is wrong>`.

numpy and torch are imported by the functions that need them, so importing this module stays cheap.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

_JSON_NAMES = {dict: "a JSON object", list: "a JSON array", str: "a string", bool: "true or false",
               int: "a number", float: "a number", type(None): "null"}
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def file_error(what: str, path: str | os.PathLike, problem: str) -> ValueError:
    """The ValueError for a file whose contents are wrong, in the module's one-line form."""
    return ValueError(f"{what} {os.fspath(path)!r}: {problem}")


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's text (libraries append pages of advice below it)."""
    lines = str(error).strip().splitlines()
    line = lines[0].strip() if lines else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "..."


def one_line(text: str) -> str:
    """`text` with its lines joined: an error message on one terminal line, however it was written."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def yaml_problem(error: Exception) -> str:
    """What a PyYAML error says is wrong, and where, in one line (PyYAML spreads it over several,
    with the text and a caret)."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if not problem:
        return first_line(error)
    return problem if mark is None else f"{problem} at line {mark.line + 1} column {mark.column + 1}"


def require_file(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """`path` as a Path if it is an existing file; `hint` (say, how to make it) ends the error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist" + (f" ({hint})" if hint else ""))
    if not path.is_file():
        raise file_error(what, path, "is not a file")
    return path


def read_text(path: str | os.PathLike, what: str, hint: str = "") -> str:
    """The whole file as strict UTF-8 text."""
    path = require_file(path, what, hint)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise file_error(what, path, f"cannot be read ({error.strerror or first_line(error)})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise file_error(what, path, f"is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                                     f"{error.start})") from None


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def read_json(path: str | os.PathLike, what: str, expect: type | None = None, hint: str = "") -> Any:
    """The JSON value in `path`; with `expect` (dict, list), a value of another type is an error."""
    text = read_text(path, what, hint)
    if not text.strip():
        raise file_error(what, path, "is empty, not JSON")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise file_error(what, path, f"is not valid JSON ({error.msg} at line {error.lineno} "
                                     f"column {error.colno})") from None
    except RecursionError:
        raise file_error(what, path, "is not usable JSON (nested too deeply)") from None
    if expect is not None and not isinstance(value, expect):
        raise file_error(what, path, f"expected {_JSON_NAMES[expect]}, got {_json_name(value)}")
    return value


def load_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """A .npy array, memory-mapped read-only (a multi-GB array costs only the pages read)."""
    import numpy as np

    path = require_file(path, what)
    with open(path, "rb") as file:
        magic = file.read(len(_NPY_MAGIC))
    if not magic:
        raise file_error(what, path, "is empty (0 bytes), not a .npy array")
    if magic[:len(_ZIP_MAGIC)] == _ZIP_MAGIC:
        raise file_error(what, path, "is a zip archive (.npz?), not a .npy array")
    if magic != _NPY_MAGIC:
        raise file_error(what, path, "is not a .npy array (it does not start with the .npy header)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        message = str(error)
        if "mmap length is greater than file size" in message:
            problem = "is truncated (shorter than its header says)"
        elif isinstance(error, EOFError) or message.startswith("EOF"):
            problem = "is truncated (inside its header)"
        elif "Python objects" in message or "pickled" in message:
            problem = "holds Python objects, not numbers (not loaded)"
        else:
            problem = f"has a corrupt .npy header ({first_line(error)})"
        raise file_error(what, path, problem) from None


def _weights_only_problem(message: str) -> str:
    """What torch's weights-only unpickler objected to, without its advice to load unsafely."""
    blocked = re.search(r"GLOBAL ([\w.]+?)\.?(?:\s|$)", message)
    if blocked:
        return (f"refused: unpickling it would load {blocked[1]}, which could run code "
                "(only tensors and plain values are loaded)")
    reason = message.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0].strip()
    if reason and not reason.startswith("Weights only load failed"):
        return f"is not a readable checkpoint ({reason.splitlines()[0].strip()})"
    return "is not a readable checkpoint (its pickle holds something other than tensors and plain values)"


def load_torch(src: str | os.PathLike | IO[bytes], what: str = "checkpoint",
               map_location: Any = "cpu") -> dict[str, Any]:
    """The dict saved by torch.save in `src` (a path or a binary file object), weights-only."""
    import pickle

    import torch

    name = "<stream>"
    if isinstance(src, (str, os.PathLike)):
        name = os.fspath(require_file(src, what))
        if os.path.getsize(src) == 0:
            raise file_error(what, name, "is empty (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():
            # A foreign pickle makes the unpickler warn about its protocol before it fails.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(src, map_location=map_location, weights_only=True)
    except torch.OutOfMemoryError:
        raise  # the device is full: not the file's fault, and torch's message says so
    except pickle.UnpicklingError as error:
        raise file_error(what, name, _weights_only_problem(str(error))) from None
    except Exception as error:  # on corrupt bytes the unpickler can fail in any way
        raise file_error(what, name, f"is not a readable checkpoint (corrupt or truncated: "
                                     f"{type(error).__name__}: {first_line(error)})") from None
    if not isinstance(state, dict):
        raise file_error(what, name, f"holds a {type(state).__name__}, not a dict of tensors and values")
    return state


# ---- writing -------------------------------------------------------------------------------

def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The file that keeps `path` from being a folder: `path` itself or its nearest existing
    ancestor, when that is not a folder; None when `path` is a folder or could be made one."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _not_a_folder(path: Path, blocker: Path) -> str:
    """The end of a message about `path` when `blocker` keeps it from being a folder."""
    return " is a file, not a folder" if blocker == path else f": {str(blocker)!r} is a file, not a folder"


def check_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path when it is a folder or could be made one; otherwise NotADirectoryError naming
    `what` (an option, say) and the file in the way. Creates nothing, so a command can check all its
    output folders before it writes to any."""
    path = Path(path)
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise NotADirectoryError(f"{what} {str(path)!r}{_not_a_folder(path, blocker)}")
    return path


def os_error_text(error: OSError) -> str:
    """One line for an OSError: ours as written; a failed system call's as `'<path>': <what is
    wrong>`, naming the file in the way when a folder could not be made (errno's own words for that
    name the path it tried, not the file that stopped it)."""
    if error.errno is None or error.filename is None:
        return one_line(str(error)) or type(error).__name__
    path = os.fsdecode(error.filename)
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = file_in_the_way(path)
        if blocker is not None:
            return f"{path!r}{_not_a_folder(Path(path), blocker)}"
    where = path if error.filename2 is None else f"{path} -> {os.fsdecode(error.filename2)}"
    reason = error.strerror or type(error).__name__
    return f"{where!r}: {reason[:1].lower()}{reason[1:]}"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
