"""Writes that leave either the old file (or folder) or the new one.

A kill or a full disk during a write leaves a temporary ``.NAME.tmpPID``
beside the target, never a truncated target.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    # read once: os.umask can only be read by setting it, which would
    # briefly change it for every thread of the process
    umask = os.umask(0)
    os.umask(umask)
    return umask


# The mode a plain ``open`` gives a new file.
_FILE_MODE = 0o666 & ~_umask()


def _readable_by_all(path: str) -> None:
    """Give the files at ``path`` (a file, or a folder's files) the mode a
    plain ``open`` gives: safetensors' ``save_file`` makes them 0600, which
    a UI running as another user cannot read."""
    files = [path] if os.path.isfile(path) else [
        os.path.join(root, name) for root, _, names in os.walk(path)
        for name in names]
    for file in files:
        os.chmod(file, _FILE_MODE)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename.

    On any failure the temporary file is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        write(tmp)
        _readable_by_all(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def atomic_write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yield a temporary folder that replaces ``path`` once the block ends.

    A failure inside the block removes the temporary folder and keeps any
    existing ``path``.
    """
    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        _readable_by_all(tmp)
        old = None
        if os.path.exists(path):
            old = f"{tmp}.old"
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)
