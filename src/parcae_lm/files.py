"""Safe writes on the local file system: atomic files and directories, inter-process locks, checksums,
and one-line errors for a write that cannot happen (disk full, read-only, a file in the way).

Everything parcae-lm persists (runs, checkpoints, shards, the download cache) goes through these, so a crash
or a second process never leaves a half-written file under its final name.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from parcae_lm.errors import StorageError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Temporary files are created 0600; a finished file gets the mode a plain open() would have given it.
_FILE_MODE = 0o666 & ~_read_umask()


def publish_file(tmp: Path, path: Path) -> None:
    """Give a finished temporary file its normal permissions and rename it to `path` (atomically)."""
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in `chunk`-byte blocks (bounded memory for multi-GB files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on `path`, waiting for it (so parallel ranks or processes sharing a
    cache entry do a piece of work once, and the others find it done)."""
    path = Path(path)
    ensure_dir(path.parent, "lock directory")
    try:
        f = open(path, "a")  # noqa: SIM115 - closed below; "a" never truncates a file another process holds
    except OSError as e:
        raise write_failure(e, path, "lock file") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the duration, or fail at once with a StorageError naming
    `what` and the process that holds it (pid, host, command, since when).

    The lock is the kernel's (flock): it is released when its holder exits, even by SIGKILL, so there
    is never a stale lock to remove. The file stays (removing a lock file races with the next locker);
    while held it records the holder, and it is emptied on release.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise write_failure(e, path, f"the lock of {what}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(
                f"{what} is in use by {_holder(path)}; wait for it to finish, or stop it first"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    """Who holds the lock at `path`, from what it wrote there ("another process" if it has not yet)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    command = f" ({info['command']})" if info.get("command") else ""
    return f"pid {info['pid']} on {info.get('host', '?')}{command} since {info.get('since', '?')}"


def ensure_dir(path: Path, what: str) -> Path:
    """Create directory `path` and its parents if needed, or raise a StorageError naming `what`: a file in
    the way, a read-only file system, no permission."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageError(f"{what} {path} is a file, not a directory") from None
    except NotADirectoryError:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        raise StorageError(f"{what} {path} cannot be created: {blocker} is a file, not a directory") from None
    except OSError as e:
        raise write_failure(e, path, what) from None
    return path


def write_failure(error: BaseException, path: Path, what: str, needed_bytes: int = 0) -> StorageError:
    """A one-line StorageError for a failed write of `what` at `path`. It says so when the disk is full:
    the error is ENOSPC/EDQUOT, or (for writers that do not report an errno, like torch.save) the free space
    is below `needed_bytes`."""
    if isinstance(error, StorageError):
        return error
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing if existing.is_dir() else existing.parent).free
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (needed_bytes and free < needed_bytes):
        need = f", about {_mb(needed_bytes)} needed" if needed_bytes else ""
        return StorageError(f"cannot write {what} at {path}: the disk is full ({_mb(free)} free{need})")
    if code == errno.EROFS:
        return StorageError(f"cannot write {what} at {path}: the file system is read-only")
    if code in (errno.EACCES, errno.EPERM):
        return StorageError(f"cannot write {what} at {path}: permission denied")
    if code == errno.ENOTDIR:
        return StorageError(f"cannot write {what} at {path}: a part of the path is a file, not a directory")
    reason = getattr(error, "strerror", None) or " ".join(str(error).split()) or type(error).__name__
    return StorageError(f"cannot write {what} at {path}: {reason}")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def atomic_write_bytes(path: Path, data: bytes, what: str = "file") -> None:
    """Write then rename, so a crash never leaves a half-written file under the final name. A failure
    (a full disk, a read-only file system) raises StorageError naming `what` and `path`."""
    path = Path(path)
    ensure_dir(path.parent, f"the directory of {what}")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish_file(Path(tmp), path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_failure(e, path, what, len(data)) from e
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, what: str = "file") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), what)


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
