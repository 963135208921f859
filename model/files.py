"""Durable file writes: a crash leaves the old file or the new one, never part of one."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_many", "fsync_dir", "remove_stale_temps"]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TEMP_SUFFIX = ".tmp"


def temp_prefix(path: Path) -> str:
    """The name a temporary file for ``path`` starts with: hidden, and naming the writing process, so that what a
    killed writer left behind can be told from what a live one is writing (``remove_stale_temps``)."""
    return f".{path.name}.{os.getpid()}."


def remove_stale_temps(directory: Path, name: str) -> int:
    """Remove the temporary files of ``directory/name`` whose writer is no longer running; the number removed."""
    removed = 0
    for tmp in directory.glob(f".{name}.*{TEMP_SUFFIX}"):
        pid = tmp.name[len(name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory. ``data``: the bytes, or a function that
    writes them to the open file (to stream what would be costly to hold in memory at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # mkstemp makes 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _fsync_all(paths: Iterable[Path | str]) -> None:
    """fsync every path at once from a few threads: the file system commits them together, where one after another
    each waits for a commit of its own."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(8, thread_name_prefix="fsync")
    for f in [_pool.submit(fsync_dir, Path(p)) for p in paths]:  # (fsync_dir opens read-only: right for files too)
        f.result()


def atomic_write_many(files: Mapping[Path, bytes], mode: int = 0o644) -> None:
    """``atomic_write`` for many files at once: each is written to a temporary file, all are made durable together,
    renamed, and their directories made durable together. A crash leaves each file whole or absent; on an error,
    nothing this call wrote is left (neither temporary files nor renamed ones)."""
    temps: dict[Path, str] = {}
    renamed: set[Path] = set()
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
            temps[path] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), mode)
        _fsync_all(temps.values())
        for path, tmp in temps.items():
            os.replace(tmp, path)
            renamed.add(path)
        _fsync_all({p.parent for p in temps})
    except BaseException:
        for path, tmp in temps.items():
            (path if path in renamed else Path(tmp)).unlink(missing_ok=True)
        raise
