"""Fetch a corpus file from a mirror folder, a local path or a URL into a plain text file.

Where a file comes from, in order:
1. the mirror folder (`--mirror` or the TINYLM_MIRROR environment variable), holding files under
   their URL names (`owt_valid.txt.gz`, or already decompressed `owt_valid.txt`);
2. the download cache (`--cache-dir`), where earlier complete downloads stay;
3. the URL itself, with `https://huggingface.co` replaced by HF_ENDPOINT when that is set.

Downloads resume partial files with HTTP Range requests, retry with exponential backoff, show a
progress bar and keep a `.part` name until complete. `.gz` files are decompressed on the fly. With
`max_bytes`, only the first bytes up to the last document end (`<|endoftext|>`) are kept; that
prefix is streamed from the URL without fetching the whole file (unless a sha256 must be checked).
The output appears under its final name only when it is complete.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from tinylm.files import atomic_path

DOC_END = b"<|endoftext|>"
CHUNK_BYTES = 1 << 20
MIRROR_ENV = "TINYLM_MIRROR"
HF_HOST = "huggingface.co"
# HTTP statuses worth another try; every other error status is final.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


class SourceUnavailable(FileNotFoundError):
    """The file could not be obtained from any of the places it may come from."""


# ---- where a file comes from -------------------------------------------------------------------

def is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https")


def with_hf_endpoint(url: str) -> str:
    """Point huggingface.co URLs at HF_ENDPOINT, as the Hugging Face tools do."""
    endpoint = os.environ.get("HF_ENDPOINT")
    parts = urllib.parse.urlparse(url)
    if not endpoint or parts.netloc != HF_HOST:
        return url
    return endpoint.rstrip("/") + urllib.parse.urlunparse(parts._replace(scheme="", netloc=""))


def url_file_name(url: str) -> str:
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name


def mirror_candidates(name: str, mirror: str | os.PathLike | None) -> list[Path]:
    """The file as published, then (for `.gz`) its decompressed form."""
    if not mirror:
        return []
    names = [name] + ([name[: -len(".gz")]] if name.endswith(".gz") else [])
    return [Path(mirror) / n for n in names]


def unavailable(name: str, source: str, reason: str, mirror: str | os.PathLike | None) -> SourceUnavailable:
    where = f"the mirror {str(mirror)!r} has no {name!r}" if mirror else f"no mirror is set ({MIRROR_ENV})"
    return SourceUnavailable(
        f"cannot get {name!r} from {source}: {reason}; {where}. Provide the file in one of these ways: "
        f"put {name!r} (or its decompressed form) in a folder named by {MIRROR_ENV} or the config key "
        f"`mirror`; set HF_ENDPOINT to a reachable Hugging Face mirror; or set the corpus `source` in "
        f"the config to a local copy.")


# ---- byte streams ------------------------------------------------------------------------------

def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def url_chunks(url: str, start: int = 0, *, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
               progress: bool = True) -> Iterator[bytes]:
    """The bytes of `url` from offset `start`, resuming with Range requests after a broken transfer."""
    offset, failures = start, 0
    bar = None
    try:
        while True:
            headers = {"User-Agent": "tinylm-download", "Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                    # A server that ignores Range sends the whole file: skip what we already have.
                    skip = offset if offset and resp.status != 206 else 0
                    length = resp.headers.get("Content-Length")
                    expected = offset + int(length) - skip if length is not None else None
                    if bar is None and progress:
                        bar = tqdm(total=expected, initial=offset, unit="B", unit_scale=True,
                                   desc=url_file_name(url), mininterval=2.0, file=sys.stderr)
                    while chunk := resp.read(CHUNK_BYTES):
                        if skip:
                            dropped = min(skip, len(chunk))
                            chunk, skip = chunk[dropped:], skip - dropped
                        offset += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                        if chunk:
                            yield chunk
                    if expected is not None and offset < expected:
                        raise http.client.IncompleteRead(b"", expected - offset)
                    return
            except urllib.error.HTTPError as error:
                if error.code == 416 and offset:
                    return  # the range starts at the end: nothing is missing
                if error.code not in RETRY_STATUSES or failures >= retries:
                    raise SourceUnavailable(f"HTTP {error.code} {error.reason}") from None
            except urllib.error.URLError as error:
                # No name resolution or a refused connection: no network or no server; fail at once.
                if isinstance(error.reason, (socket.gaierror, ConnectionRefusedError)) or failures >= retries:
                    raise SourceUnavailable(str(error.reason)) from None
            except (http.client.HTTPException, ConnectionError, TimeoutError) as error:
                if failures >= retries:
                    raise SourceUnavailable(f"transfer failed after {retries} retries: {error!r}") from None
            failures += 1
            delay = backoff * 2 ** (failures - 1)
            print(f"download interrupted at byte {offset}; retry {failures}/{retries} in {delay:g} s",
                  file=sys.stderr)
            time.sleep(delay)
    finally:
        if bar is not None:
            bar.close()


def gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a gzip stream (several members allowed) chunk by chunk."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for chunk in chunks:
        while chunk:
            yield decompressor.decompress(chunk)
            chunk = b""
            if decompressor.eof:
                chunk = decompressor.unused_data
                decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    yield decompressor.flush()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in file_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ValueError(f"{path}: sha256 mismatch: expected {expected.lower()}, got {actual}")


# ---- writing -----------------------------------------------------------------------------------

def document_cut(buffer: bytes | bytearray, max_bytes: int) -> int | None:
    """End of the last whole document (after `<|endoftext|>` and its newline) within max_bytes."""
    i = buffer.rfind(DOC_END, 0, max_bytes)
    while i >= 0:
        end = i + len(DOC_END)
        if buffer[end:end + 1] == b"\n":
            end += 1
        if end <= max_bytes:
            return end
        i = buffer.rfind(DOC_END, 0, i)
    return None


def write_prefix(chunks: Iterable[bytes], out: BinaryIO, max_bytes: int | None) -> int:
    """Write all of `chunks`, or its first documents up to `max_bytes`; return the bytes written."""
    if max_bytes is None:
        written = 0
        for chunk in chunks:
            out.write(chunk)
            written += len(chunk)
        return written
    buffer = bytearray()
    cut = None
    for chunk in chunks:
        buffer += chunk
        if len(buffer) > max_bytes:  # one byte past the limit shows a newline right after it
            cut = document_cut(buffer, max_bytes)
            if cut is None:  # a first document longer than max_bytes: keep it whole
                found = buffer.find(DOC_END)
                cut = None if found < 0 else document_cut(buffer, found + len(DOC_END) + 1)
            if cut is not None:
                break
    if cut is None:
        cut = len(buffer)  # the whole source is shorter (or holds no document end at all)
    out.write(buffer[:cut])
    return cut


def download(source: str, out: str | os.PathLike, *, sha256: str | None = None, max_bytes: int | None = None,
             mirror: str | os.PathLike | None = None, cache_dir: str | os.PathLike = "results/cache",
             retries: int = 5, backoff: float = 1.0, timeout: float = 60.0, progress: bool = True) -> Path:
    """Write the text of `source` (URL, `file://` URL or local path) to `out`; return `out`."""
    out = Path(out)
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if is_url(source):
        name = url_file_name(source)
        path = next((p for p in mirror_candidates(name, mirror) if p.is_file()), None)
        if path is None:
            url = with_hf_endpoint(source)
            cached = Path(cache_dir) / name
            if cached.is_file():
                path = cached
            elif max_bytes is not None and not sha256:
                chunks = url_chunks(url, retries=retries, backoff=backoff, timeout=timeout, progress=progress)
                return write_text(chunks, name, out, max_bytes, url, mirror)
            else:  # fetch checks the checksum itself, before the file takes its final name
                fetch(url, cached, retries=retries, backoff=backoff, timeout=timeout, progress=progress,
                      sha256=sha256, mirror=mirror)
                return write_text(file_chunks(cached), name, out, max_bytes, source, mirror)
    else:
        path = Path(source.removeprefix("file://")).expanduser()
        name = path.name
        if not path.is_file():
            raise FileNotFoundError(f"{source}: no such local file")
    if sha256 and path.name == name:  # a decompressed mirror copy has other bytes than the published file
        check_sha256(path, sha256)
    return write_text(file_chunks(path), path.name, out, max_bytes, source, mirror)


def write_text(chunks: Iterable[bytes], name: str, out: Path, max_bytes: int | None, source: str,
               mirror: str | os.PathLike | None) -> Path:
    if name.endswith(".gz"):
        chunks = gunzip(chunks)
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            write_prefix(chunks, f, max_bytes)
    except SourceUnavailable as error:
        raise unavailable(name, source, str(error), mirror) from None
    except zlib.error as error:
        raise ValueError(f"{source}: not a valid gzip file ({error})") from None
    return out


def fetch(url: str, dest: Path, *, retries: int, backoff: float, timeout: float, progress: bool,
          sha256: str | None, mirror: str | os.PathLike | None) -> None:
    """Download `url` completely to `dest`, resuming `dest.part` if an earlier attempt left one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    try:
        with open(part, "ab") as f:
            for chunk in url_chunks(url, start, retries=retries, backoff=backoff, timeout=timeout,
                                    progress=progress):
                f.write(chunk)
    except SourceUnavailable as error:
        raise unavailable(dest.name, url, str(error), mirror) from None
    if sha256:
        try:
            check_sha256(part, sha256)
        except ValueError:
            part.unlink()  # a corrupt download must not be resumed
            raise
    os.replace(part, dest)


# ---- command line ------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("source", help="URL, file:// URL or local path (.gz is decompressed)")
    parser.add_argument("--out", required=True, help="text file to write")
    parser.add_argument("--sha256", help="expected sha256 of the published file")
    parser.add_argument("--max-bytes", type=int, help="keep only the first N bytes, cut at a document end")
    parser.add_argument("--mirror", help=f"folder consulted before any URL (default ${MIRROR_ENV})")
    parser.add_argument("--cache-dir", default="results/cache", help="where complete downloads are kept")
    parser.add_argument("--retries", type=int, default=5, help="retries of a failed transfer")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry")


def run(args) -> int:
    if args.max_bytes is not None and args.max_bytes < 1:
        raise ValueError(f"--max-bytes must be positive, got {args.max_bytes}")
    out = download(args.source, args.out, sha256=args.sha256, max_bytes=args.max_bytes, mirror=args.mirror,
                   cache_dir=args.cache_dir, retries=args.retries, timeout=args.timeout)
    print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)
    return 0
