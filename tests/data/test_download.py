"""tinylm download against a real HTTP server on 127.0.0.1 (in a thread)."""
from __future__ import annotations

import gzip
import hashlib

import pytest
from local_http import LocalHTTPServer, QuietHandler

from tinylm.cli import main
from tinylm.data.download import SourceUnavailable, document_cut, download

DOCS = b"".join(b"story %d: " % i + b"x" * (i * 37 % 200) + b"\n<|endoftext|>\n" for i in range(400))


class Server:
    """Serves `files` by path, honours Range, and can break transfers on purpose."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.break_after: dict[str, int] = {}   # path -> bytes sent before dropping the connection (once)
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(QuietHandler):
            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range") and not server.ignore_range:
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                limit = server.break_after.pop(self.path, None)
                payload = body[start:] if limit is None else body[start:start + limit]
                self.wfile.write(payload)
                if limit is not None:
                    self.close_connection = True

        self.http = LocalHTTPServer(Handler)
        self.url = self.http.base_url
        self.close = self.http.close


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_ambient_mirror(monkeypatch):
    monkeypatch.delenv("TINYLM_MIRROR", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def fetch(source, tmp_path, **kwargs):
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    return download(source, tmp_path / "out.txt", backoff=0.01, progress=False, **kwargs).read_bytes()


def test_plain_download_is_cached(server, tmp_path):
    server.files["/a.txt"] = DOCS
    assert fetch(server.url + "/a.txt", tmp_path) == DOCS
    assert (tmp_path / "cache" / "a.txt").read_bytes() == DOCS
    server.files.clear()  # a second request would now fail: the cache must answer
    assert fetch(server.url + "/a.txt", tmp_path) == DOCS


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.files["/a.txt"] = DOCS
    server.break_after["/a.txt"] = 1000
    assert fetch(server.url + "/a.txt", tmp_path) == DOCS
    assert server.requests == [("/a.txt", None), ("/a.txt", "bytes=1000-")]


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    server.files["/a.txt"] = DOCS
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "a.txt.part").write_bytes(DOCS[:777])
    assert fetch(server.url + "/a.txt", tmp_path) == DOCS
    assert server.requests == [("/a.txt", "bytes=777-")]
    assert not (tmp_path / "cache" / "a.txt.part").exists()


def test_server_without_range_support_still_resumes_correctly(server, tmp_path):
    server.files["/a.txt"] = DOCS
    server.break_after["/a.txt"] = 1234
    server.ignore_range = True
    assert fetch(server.url + "/a.txt", tmp_path) == DOCS


def test_checksum(server, tmp_path):
    server.files["/a.txt"] = DOCS
    good = hashlib.sha256(DOCS).hexdigest()
    assert fetch(server.url + "/a.txt", tmp_path, sha256=good) == DOCS
    with pytest.raises(ValueError, match="sha256 mismatch"):
        fetch(server.url + "/a.txt", tmp_path / "other", sha256="0" * 64)
    assert not (tmp_path / "other" / "out.txt").exists()
    assert not list((tmp_path / "other" / "cache").iterdir())  # neither a cached file nor a .part to resume


def test_404_fails_at_once_naming_file_and_remedies(server, tmp_path):
    with pytest.raises(SourceUnavailable) as error:
        fetch(server.url + "/missing.txt.gz", tmp_path, retries=5)
    message = str(error.value)
    assert "missing.txt.gz" in message and "404" in message and "TINYLM_MIRROR" in message
    assert "HF_ENDPOINT" in message
    assert len(server.requests) == 1
    assert not (tmp_path / "out.txt").exists()


def test_no_server_fails_fast_via_cli(tmp_path, capsys):
    # A port with nothing listening stands in for a machine without network.
    code = main(["download", "http://127.0.0.1:9/TinyStoriesV2-GPT4-valid.txt", "--out", str(tmp_path / "o.txt"),
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 2
    err = capsys.readouterr().err
    assert "TinyStoriesV2-GPT4-valid.txt" in err and "TINYLM_MIRROR" in err
    assert not (tmp_path / "o.txt").exists()


def test_gz_is_decompressed(server, tmp_path):
    server.files["/owt.txt.gz"] = gzip.compress(DOCS[:5000]) + gzip.compress(DOCS[5000:])  # two members
    assert fetch(server.url + "/owt.txt.gz", tmp_path) == DOCS


def test_max_bytes_streams_a_prefix_cut_at_a_document_end(server, tmp_path):
    server.files["/big.txt.gz"] = gzip.compress(DOCS)
    text = fetch(server.url + "/big.txt.gz", tmp_path, max_bytes=3000)
    assert len(text) <= 3000 and text.endswith(b"<|endoftext|>\n") and DOCS.startswith(text)
    next_document = DOCS[len(text):].split(b"<|endoftext|>\n")[0] + b"<|endoftext|>\n"
    assert len(text) + len(next_document) > 3000  # no document that fits is left out
    assert not (tmp_path / "cache").exists()  # a prefix never needs the whole file


def test_document_cut():
    text = b"aa\n<|endoftext|>\nbbbb\n<|endoftext|>\ncc"
    assert document_cut(text, len(text)) == text.index(b"cc")
    assert document_cut(text, text.index(b"cc") - 1) == text.index(b"bbbb")
    assert document_cut(text, 5) is None


def test_mirror_is_consulted_before_the_url(server, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "owt_valid.txt").write_bytes(DOCS)  # the decompressed form of owt_valid.txt.gz
    monkeypatch.setenv("TINYLM_MIRROR", str(mirror))
    assert fetch(server.url + "/owt_valid.txt.gz", tmp_path) == DOCS
    assert server.requests == []


def test_hf_endpoint_replaces_huggingface_host(server, tmp_path, monkeypatch):
    server.files["/datasets/x/resolve/main/v.txt"] = DOCS
    monkeypatch.setenv("HF_ENDPOINT", server.url + "/")
    assert fetch("https://huggingface.co/datasets/x/resolve/main/v.txt", tmp_path) == DOCS
    assert server.requests[0][0] == "/datasets/x/resolve/main/v.txt"


def test_local_path_and_missing_local_path(tmp_path):
    source = tmp_path / "local.txt"
    source.write_bytes(DOCS)
    assert fetch(str(source), tmp_path, max_bytes=len(DOCS) + 10) == DOCS
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        fetch(str(tmp_path / "nowhere.txt"), tmp_path)
