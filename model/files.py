"""Durable file writes: a crash leaves the old file or the new one, never part of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "fsync_dir", "remove_stale_temps"]


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
