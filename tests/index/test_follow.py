"""Every ImageIndex follows its store's change log, whoever wrote the change (both stores).

Two ImageIndex objects on one store stand for two processes: each has its own connection and
its own FAISS index. With SQLite they share the index directory (as workers on one machine
do); with PostgreSQL each has a directory of its own (as replicas on several machines do).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from index.index import SNAPSHOT, ImageIndex, WeightsMismatch
from index.snapshot import read_snapshot
from tests.index.helpers import DIM, item

H = "a" * 64
LAG_BOUND_S = 5.0  # generous: the follower polls every 0.05 s here (the bench measures the real lag)


def replica(tmp_path: Path, store_url: str | None, name: str, **kw: object) -> ImageIndex:
    directory = tmp_path / "shared" if store_url is None else tmp_path / name
    return ImageIndex(directory, weights_hash=kw.pop("weights_hash", H), dim=DIM, store_url=store_url, **kw)  # type: ignore[arg-type]


def eventually(cond: Callable[[], bool], what: str, timeout: float = LAG_BOUND_S) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def snapshot_seq(directory: Path) -> int:
    return int(read_snapshot(directory / SNAPSHOT)[1]["seq"])


def test_an_add_by_another_process_is_applied_at_restart_not_skipped(tmp_path: Path, store_url: str | None) -> None:
    """The reported defect: the server's snapshot was stamped with the store's newest change, so a CLI add
    made while it ran was never replayed, not even after a restart."""
    server = replica(tmp_path, store_url, "server")  # not following: only the snapshot stamp can save the add
    server.add([item(1)])
    cli = replica(tmp_path, store_url, "cli")
    (cli_add,) = cli.add([item(2)])
    cli.close()
    server.close()  # writes its snapshot: it holds change 1 only
    assert snapshot_seq(server.dir) == 1
    with replica(tmp_path, store_url, "server") as again:
        assert len(again) == 2 and again.applied_seq == 2
        assert again.search(item(2).vector, k=1)[0][0].id == cli_add.id


def test_adds_and_deletes_by_another_process_are_followed(tmp_path: Path, store_url: str | None) -> None:
    a = replica(tmp_path, store_url, "a", follow_interval=0.05)
    b = replica(tmp_path, store_url, "b", follow_interval=0.05)
    try:
        ids = [r.id for r in b.add([item(i) for i in range(5)])]
        assert [h.id for h in b.search(item(3).vector, k=1)[0]] == [ids[3]]  # read-your-writes: at once
        eventually(lambda: len(a) == 5, "a follows b's adds")
        assert a.search(item(3).vector, k=1)[0][0].id == ids[3]
        (own,) = a.add([item(9)])
        assert b.delete(ids[3]) is not None
        # an id deleted anywhere is never returned, even before the follower has applied the delete
        assert ids[3] not in [h.id for h in a.search(item(3).vector, k=10)[0]]
        eventually(lambda: len(a) == 5 and len(b) == 5, "both hold 4 + 1 images")
        assert own.id not in ids and a.check() == [] and b.check() == []
        assert a.applied_seq == b.applied_seq == 7
        status = a.follow_status()
        assert status["following"] and "store_error" not in status and status["seconds_since_sync"] < LAG_BOUND_S
    finally:
        a.close()
        b.close()


def test_a_replica_with_other_weights_refuses_the_store(tmp_path: Path, store_url: str | None) -> None:
    with replica(tmp_path, store_url, "a") as a:
        a.add([item(1)])
        with pytest.raises(WeightsMismatch, match="serves weights aaaaaaaaaaaa"):
            replica(tmp_path, store_url, "b", weights_hash="b" * 64)


def test_the_compressed_index_switch_happens_on_every_replica(tmp_path: Path, store_url: str | None) -> None:
    a = replica(tmp_path, store_url, "a", follow_interval=0.05, auto_threshold=60)
    b = replica(tmp_path, store_url, "b", follow_interval=0.05, auto_threshold=60)
    try:
        a.add([item(i) for i in range(80)])
        eventually(lambda: a.factory != "flat" and b.factory != "flat", "both switch", timeout=60)
        assert a.factory == b.factory and a.factory.startswith("PCA")
        for idx in (a, b):
            assert idx.wait_rebuild(60)
            eventually(lambda idx=idx: len(idx) == 80, "all 80 indexed")  # type: ignore[misc]
            assert idx.search(item(42).vector, k=1)[0][0].id == 43
    finally:
        a.close()
        b.close()
