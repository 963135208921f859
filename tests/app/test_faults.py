"""Faults while saving (RELIABILITY.md 19): a full disk gives a clear error and nothing half-done.

(A read-only remount cannot be tested this way: the kernel refuses it while SQLite holds the
database open for writing. The store turns any OSError/sqlite3.Error into the same 507; see
tests/index/test_index.py::test_failed_write_leaves_store_index_and_files_agreeing.)
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import AUTH, image_bytes, make_settings, upload


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (needs root and mount permission; skipped elsewhere)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def state(client: TestClient) -> tuple[int, list[str]]:
    index = client.app.state.service.index
    return len(index), index.check()


def test_disk_full_during_add_is_507_and_state_stays_consistent(tmp_path: Path, small_fs: Path, small_weights: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, small_weights, index_dir=small_fs / "index"))) as client:
        assert client.post("/images", files=upload("a.png", image_bytes(1)), headers=AUTH).status_code == 201
        filler = small_fs / "filler"
        with open(filler, "wb") as f:  # fill the disk
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        big = image_bytes(2, size=(200, 200))
        r = client.post("/images", files=upload("b.png", big), headers=AUTH)
        assert r.status_code == 507 and "nothing was added" in r.json()["detail"]
        assert state(client) == (1, [])
        assert client.post("/classify", files=upload()).status_code == 200  # still serving
        filler.unlink()
        assert client.post("/images", files=upload("b.png", big), headers=AUTH).status_code == 201
        assert state(client) == (2, [])
