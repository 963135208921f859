"""The snapshot file by itself: a round trip, and every kind of damage refused by name; and a snapshot refused
when its gallery or history is not the store's."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import pytest

from index.snapshot import MAGIC, read_snapshot, write_snapshot

if TYPE_CHECKING:
    from index.index import ImageIndex


def _at_header(data: bytes, byte: bytes) -> bytes:
    """``data`` with the first byte of its header (the JSON after the body) replaced."""
    (hlen,) = struct.unpack("<I", data[-4:])
    at = len(data) - 4 - hlen
    return data[:at] + byte + data[at + 1 :]


def _index() -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    index.add_with_ids(np.eye(8, dtype=np.float32)[:5], np.array([3, 5, 7, 9, 11], dtype=np.int64))
    return index


def test_round_trip_keeps_the_vectors_ids_and_header(tmp_path: Path) -> None:
    path = tmp_path / "index.faiss"
    write_snapshot(path, _index(), {"seq": 42, "weights_hash": "a" * 64, "dim": 8, "factory": "flat"})
    index, header = read_snapshot(path)
    assert (header["seq"], header["dim"], header["factory"], header["ntotal"]) == (42, 8, "flat", 5)
    _, ids = index.search(np.eye(8, dtype=np.float32)[2:3], 1)
    assert ids[0][0] == 7
    assert path.read_bytes()[:8] == MAGIC


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-10], "truncated"),
        (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "checksum"),  # one bit of the body
        (lambda b: b"NOTMAGIC" + b[8:], "magic"),
        (lambda b: b[:-4] + struct.pack("<I", 3), "truncated"),  # the header's length
        (lambda b: _at_header(b, b"X"), "header"),
    ],
)
def test_damaged_snapshots_are_refused(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "index.faiss"
    write_snapshot(path, _index(), {"seq": 1, "weights_hash": "a" * 64, "dim": 8, "factory": "flat"})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        read_snapshot(path)


# -- a snapshot belongs to one history of one gallery -------------------------------------------------------


def _open(directory: Path, store_url: str | None) -> ImageIndex:
    from index.index import ImageIndex
    from tests.index.helpers import DIM

    return ImageIndex(directory, weights_hash="a" * 64, dim=DIM, store_url=store_url, snapshot_every=1)


def _recreate(directory: Path, store_url: str | None) -> None:
    """Drop the gallery's store and make it anew at the same place, keeping the index directory (and its snapshot)."""
    if store_url is None:
        for p in directory.glob("store.sqlite*"):
            p.unlink()
        return
    import psycopg

    with psycopg.connect(store_url, autocommit=True) as conn:
        conn.execute("DROP TABLE alexnet_images, alexnet_changes, alexnet_meta")


def _finds_itself(idx: ImageIndex, items: list) -> int:  # type: ignore[type-arg]
    return sum(idx.search(it.vector, k=1)[0][0].id == i for i, it in items)


def test_a_snapshot_of_a_store_made_anew_is_rebuilt_not_served(tmp_path: Path, store_url: str | None) -> None:
    """Before: after the database was dropped and made anew, and written past the old snapshot's stamp, 0 of 4 new
    images found themselves through a restarted replica (the old history's snapshot was loaded)."""
    from index.identity import claim_identity
    from index.store import open_store
    from tests.index.helpers import DIM, item

    with _open(tmp_path, store_url) as idx:
        idx.add([item(i) for i in range(6)])
    assert (tmp_path / "index.faiss").is_file()
    _recreate(tmp_path, store_url)
    store = open_store(tmp_path, store_url)  # the new gallery, written by another process
    try:
        claim_identity(store, "a" * 64, DIM, None, readonly=False)
        new = [item(100 + i) for i in range(8)]  # the new history runs past the old stamp (6)
        ids = [i for i, _, _ in store.add_many(new)]
    finally:
        store.close()
    with _open(tmp_path, store_url) as idx:
        assert idx.snapshot.recovered is not None and "another gallery" in idx.snapshot.recovered
        assert _finds_itself(idx, list(zip(ids, new, strict=True))) == 8
        assert idx.check() == []


def test_a_snapshot_newer_than_a_restored_backup_is_rebuilt(tmp_path: Path) -> None:
    """A store restored from an older copy has the same gallery id and reuses change numbers and ids; written past
    the snapshot's stamp, the change at the stamp is another image, and the snapshot is refused."""
    import shutil

    from index.store import open_store
    from tests.index.helpers import item

    backup = tmp_path / "backup"
    with _open(tmp_path / "g", None) as idx:
        idx.add([item(i) for i in range(3)])
    backup.mkdir()
    shutil.copy(tmp_path / "g" / "store.sqlite", backup / "store.sqlite")  # (closed: the WAL is checkpointed)
    with _open(tmp_path / "g", None) as idx:
        idx.add([item(i) for i in range(3, 6)])  # the snapshot now stamps change 6
    shutil.copy(backup / "store.sqlite", tmp_path / "g" / "store.sqlite")
    for p in (tmp_path / "g").glob("store.sqlite-*"):
        p.unlink()
    store = open_store(tmp_path / "g")
    try:
        new = [item(200 + i) for i in range(5)]  # changes 4..8, other images than 4..6 were
        ids = [i for i, _, _ in store.add_many(new)]
    finally:
        store.close()
    with _open(tmp_path / "g", None) as idx:
        assert idx.snapshot.recovered is not None and "another history" in idx.snapshot.recovered
        assert _finds_itself(idx, list(zip(ids, new, strict=True))) == 5
        assert len(idx) == 8


def test_temporary_files_of_killed_writers_are_removed_at_open(tmp_path: Path) -> None:
    import os

    with _open(tmp_path, None):
        pass
    dead = tmp_path / ".index.faiss.999999999.abc.tmp"
    mine = tmp_path / f".index.faiss.{os.getpid()}.def.tmp"  # a live writer's
    dead.write_bytes(b"x" * 100)
    mine.write_bytes(b"y")
    with _open(tmp_path, None):
        pass
    assert not dead.exists() and mine.exists()


def test_writing_a_snapshot_holds_no_copy_of_the_index(tmp_path: Path) -> None:
    """The body is streamed from FAISS to the file: the peak resident memory of the process does not grow by the
    index's size while it is written (it grew by three times that: serialised, turned into bytes, joined)."""
    rows = 12_000  # 4096-d: 197 MB
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(4096))
    for start in range(0, rows, 1000):
        index.add_with_ids(np.ones((1000, 4096), dtype=np.float32), np.arange(start, start + 1000, dtype=np.int64))
    size_mb = rows * 4096 * 4 / 2**20
    clear = Path("/proc/self/clear_refs")
    if not clear.exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak")
    clear.write_text("5")  # the peak (VmHWM) starts again from the current resident size

    def kib(field: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
        return int(line.split()[1])

    before = kib("VmRSS")
    write_snapshot(tmp_path / "index.faiss", index, {"seq": 1, "weights_hash": "a" * 64, "dim": 4096, "factory": "flat"})
    grew_mb = (kib("VmHWM") - before) / 1024
    assert grew_mb < size_mb / 4, f"peak grew by {grew_mb:.0f} MB writing a {size_mb:.0f} MB index"
    assert read_snapshot(tmp_path / "index.faiss")[1]["ntotal"] == rows
