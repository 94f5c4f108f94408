"""parcae_lm.files: atomic writes never leave a partial file, directories replace whole, locks exclude."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time

import pytest

from parcae_lm.files import atomic_write_bytes, atomic_write_text, file_lock, replace_dir, sha256_file


def _plain_mode(tmp_path) -> int:
    """The permissions an ordinary open() gives a new file under the current umask."""
    (tmp_path / ".probe").write_bytes(b"")
    mode = stat.S_IMODE((tmp_path / ".probe").stat().st_mode)
    (tmp_path / ".probe").unlink()
    return mode


def test_atomic_write_replaces_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "new" / "dir" / "f.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second" and os.listdir(path.parent) == ["f.bin"]
    assert stat.S_IMODE(path.stat().st_mode) == _plain_mode(tmp_path)  # not the temporary file's 0600
    atomic_write_text(tmp_path / "t.txt", "Ærøskøbing 🙂\n")
    assert (tmp_path / "t.txt").read_bytes() == "Ærøskøbing 🙂\n".encode()


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]  # the temporary file is gone


def test_replace_dir_swaps_whole_directories(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "a").write_text("new a")
    replace_dir(src, dst)  # into a fresh place
    assert (dst / "a").read_text() == "new a" and not src.exists()
    src.mkdir()
    (src / "b").write_text("b")
    replace_dir(src, dst)  # over an existing directory: nothing of the old one survives
    assert sorted(os.listdir(dst)) == ["b"] and sorted(os.listdir(tmp_path)) == ["dst"]


def test_sha256_file_matches_hashlib_across_chunk_boundaries(tmp_path):
    data = bytes(range(256)) * 41
    (tmp_path / "x").write_bytes(data)
    for chunk in (1, 7, 256, 1 << 20):
        assert sha256_file(tmp_path / "x", chunk=chunk) == hashlib.sha256(data).hexdigest()


def test_file_lock_is_exclusive(tmp_path):
    lock = tmp_path / "not" / "yet" / ".lock"  # parents are created
    order: list[str] = []
    held = threading.Event()

    def holder() -> None:
        with file_lock(lock):
            order.append("first in")
            held.set()
            time.sleep(0.3)
            order.append("first out")

    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    with file_lock(lock):  # a second open file description blocks until the first releases
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
