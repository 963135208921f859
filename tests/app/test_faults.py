"""Faults (RELIABILITY.md 19-21): a full or read-only disk during an add gives a clear 507 and
nothing half-done; a damaged store at start means not ready, naming the file.

A read-only remount of the whole index directory is refused by the kernel while SQLite holds
the database open for writing, so the read-only test gives images/ (where an add writes first)
a tmpfs of its own and remounts that.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.testing import image_bytes
from tests.app.conftest import AUTH, make_settings, upload


@contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``mnt`` (needs root and mount permission; skipped elsewhere)."""
    mnt.mkdir(parents=True, exist_ok=True)
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True).returncode
    ):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB filesystem, to fill."""
    with tmpfs(tmp_path / "fs", "3m") as mnt:
        yield mnt


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


@pytest.fixture
def ro_images(tmp_path: Path) -> Iterator[Path]:
    """An index directory whose images/ is a tmpfs of its own, so that it can be remounted read-only
    while the server runs (SQLite's open database elsewhere in the directory would block that)."""
    with tmpfs(tmp_path / "index" / "images", "16m"):
        yield tmp_path / "index"


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def test_read_only_filesystem_during_add_is_507_and_state_stays_consistent(tmp_path: Path, ro_images: Path, small_weights: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, small_weights, index_dir=ro_images))) as client:
        assert client.post("/images", files=upload("a.png", image_bytes(1)), headers=AUTH).status_code == 201
        remount(ro_images / "images", "ro")
        r = client.post("/images", files=upload("b.png", image_bytes(2)), headers=AUTH)
        assert r.status_code == 507, r.text
        assert "Read-only file system" in r.json()["detail"] and "nothing was added" in r.json()["detail"]
        assert state(client) == (1, [])
        assert client.post("/similar", files=upload()).status_code == 200  # still serving
        assert client.get("/readyz").status_code == 200
        remount(ro_images / "images", "rw")
        assert client.post("/images", files=upload("b.png", image_bytes(2)), headers=AUTH).status_code == 201
        assert state(client) == (2, [])


def _garbage(p: Path) -> None:
    p.write_bytes(b"this is not a database" * 100)


def _truncated(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _damaged_pages(p: Path) -> None:
    data = bytearray(p.read_bytes())
    page = 4096
    for start in range(2 * page, len(data), 3 * page):  # every third page after the schema, header kept
        data[start : start + page] = os.urandom(page)
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_garbage, _truncated, _damaged_pages], ids=["garbage", "truncated", "damaged-pages"])
def test_corrupted_store_at_start_means_not_ready_naming_the_file(tmp_path: Path, small_weights: Path, damage) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, small_weights)
    with TestClient(create_app(settings)) as client:
        for i in range(12):
            assert client.post("/images", files=upload(f"{i}.png", image_bytes(i, size=(64, 64))), headers=AUTH).status_code == 201
    store = settings.index_dir / "store.sqlite"
    for extra in ("-wal", "-shm"):
        Path(f"{store}{extra}").unlink(missing_ok=True)
    damage(store)
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and "store.sqlite" in r.json()["detail"], r.text
        assert client.post("/classify", files=upload()).status_code == 200  # the model is fine
        r = client.post("/similar", files=upload())
        assert r.status_code == 503 and "store.sqlite" in r.json()["detail"]
