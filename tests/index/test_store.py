"""One suite for both stores (SQLite in a directory, a real PostgreSQL database): rows, change log, identity, races."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.store import SCHEMA_VERSION, Store, StoreError, open_store
from tests.index.helpers import DIM, item


@pytest.fixture
def store(tmp_path: Path, store_url: str | None) -> Store:
    s = open_store(tmp_path, store_url)
    yield s
    s.close()


def test_adds_are_numbered_in_order_and_duplicates_stored_once(store: Store) -> None:
    first = store.add_many([item(1), item(2), item(1)])  # the same bytes twice in one batch
    assert [(i, created) for i, created, _ in first] == [(1, True), (2, True), (1, False)]
    again = store.add_many([item(2), item(3)])
    assert [(i, created) for i, created, _ in again] == [(2, False), (3, True)]
    assert store.count() == 3 and store.all_ids().tolist() == [1, 2, 3]
    assert store.changes_after(0) == [(1, "add", 1), (2, "add", 2), (3, "add", 3)]
    assert store.last_seq() == 3 and store.changes_after(2) == [(3, "add", 3)]
    assert store.changes_after(0, limit=2) == [(1, "add", 1), (2, "add", 2)]


def test_records_vectors_and_image_bytes_round_trip(store: Store) -> None:
    it = item(7, label="shoe")
    ((image_id, _, _),) = store.add_many([it])
    rec = store.get(image_id)
    assert rec is not None and (rec.sha256, rec.label, rec.source, rec.width, rec.height) == (it.sha256, "shoe", "test:7", 8, 8)
    assert store.image_data(image_id) == (it.encoded, ".png")
    np.testing.assert_array_equal(store.vector(image_id), it.vector)
    ids, vecs = store.vectors([image_id, 999])
    assert ids.tolist() == [image_id] and vecs.shape == (1, DIM)
    assert store.get(999) is None and store.image_data(999) is None and store.vector(999) is None
    store.add_many([item(i) for i in range(20, 25)])
    pages = list(store.iter_vectors(batch=2))
    assert [len(ids) for ids, _ in pages] == [2, 2, 2] and np.concatenate([ids for ids, _ in pages]).tolist() == list(range(1, 7))


def test_delete_is_logged_harmless_twice_and_ids_are_never_reused(store: Store) -> None:
    store.add_many([item(i) for i in range(3)])
    rec = store.delete(3)
    assert rec is not None and rec.id == 3
    assert store.delete(3) is None and store.get(3) is None and store.image_data(3) is None
    assert store.changes_after(3) == [(4, "delete", 3)]
    ((new_id, created, _),) = store.add_many([item(3)])  # the same bytes again: a new image with a new id
    assert created and new_id == 4
    assert store.check() == []


def test_the_first_identity_written_wins(store: Store) -> None:
    store.init_meta({"weights_hash": "a" * 64, "dim": "32"})
    store.init_meta({"weights_hash": "b" * 64, "dim": "64"})
    assert store.get_meta("weights_hash") == "a" * 64 and store.get_meta("dim") == "32"
    store.set_meta("factory", "flat")
    assert store.get_meta("factory") == "flat" and store.get_meta("missing") is None


def test_the_same_bytes_added_by_two_writers_at_once_are_stored_once(tmp_path: Path, store_url: str | None) -> None:
    """Two store objects (two connections, as two processes have) race to add the same images."""
    a, b = open_store(tmp_path, store_url), open_store(tmp_path, store_url)
    results: dict[str, list[int]] = {}
    barrier = threading.Barrier(2)

    def writer(name: str, s: Store) -> None:
        barrier.wait()
        results[name] = [s.add_many([item(i)])[0][0] for i in range(30)]

    threads = [threading.Thread(target=writer, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert results["a"] == results["b"]  # each image got one id, whoever stored it
        assert a.count() == 30 and sorted(set(results["a"])) == a.all_ids().tolist()
        changes = a.changes_after(0)
        assert [s for s, _, _ in changes] == sorted(s for s, _, _ in changes) and len(changes) == 30
        assert a.check() == []
    finally:
        a.close()
        b.close()


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path, store_url: str | None) -> None:
    s = open_store(tmp_path, store_url)
    if store_url is None:
        s._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")  # type: ignore[attr-defined]
    else:
        s.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    s.close()
    with pytest.raises(StoreError, match="newer than this program"):
        open_store(tmp_path, store_url)


def test_a_bad_store_url_is_refused_by_name() -> None:
    with pytest.raises(StoreError, match="expected postgresql://"):
        open_store("unused", "mysql://u:secret@h/db")
    with pytest.raises(StoreError) as e:
        open_store("unused", "postgresql://u:secret@127.0.0.1:1/db")
    assert "secret" not in str(e.value) and "***" in str(e.value)


def test_pages_filters_and_label_changes(store: Store) -> None:
    store.add_many([item(i, label="a" if i % 2 else "b") for i in range(1, 8)])  # sources test:1 .. test:7
    assert [r.id for r in store.list_records(limit=3)] == [1, 2, 3]
    assert [r.id for r in store.list_records(after=3, limit=3)] == [4, 5, 6]
    assert [r.id for r in store.list_records(labels=["a"])] == [1, 3, 5, 7]
    assert [r.id for r in store.list_records(labels=["a", "b"], after=5)] == [6, 7]
    assert [r.id for r in store.list_records(source_prefix="test:6")] == [6]
    assert store.list_records(source_prefix="test:%") == [] and store.list_records(source_prefix="TEST:") == []  # no wildcards, exact
    assert store.ids_with_labels(["b"]).tolist() == [2, 4, 6]
    rec = store.set_label(2, "a")
    assert rec is not None and rec.label == "a" and store.get(2).label == "a"  # type: ignore[union-attr]
    assert store.ids_with_labels(["b"]).tolist() == [4, 6] and store.set_label(99, "x") is None
    assert store.set_label(2, None).label is None  # type: ignore[union-attr]
    assert store.last_seq() == 7  # a label is not a change of the vectors: nothing logged


def test_sqlite_reads_never_wait_behind_a_write_that_waits_for_another_process(tmp_path: Path) -> None:
    """Another process holds SQLite's write lock; this process's add waits for it (up to the busy timeout, holding
    the writing connection), and its reads meanwhile answer at once from their own connection (they used to queue
    behind the waiting writer for up to 10 s)."""
    import sqlite3
    import time

    store = open_store(tmp_path)
    try:
        store.add_many([item(1)])
        other = sqlite3.connect(tmp_path / "store.sqlite", isolation_level=None)  # as another process would
        other.execute("BEGIN IMMEDIATE")
        writer = threading.Thread(target=store.add_many, args=([item(2)],))
        writer.start()
        time.sleep(0.3)  # the add is waiting for the lock
        start = time.monotonic()
        assert store.count() == 1 and store.get(1) is not None and store.list_records(labels=["L1"])
        assert time.monotonic() - start < 1.0
        other.execute("ROLLBACK")
        writer.join(15)
        other.close()
        assert store.count() == 2  # the add went through once the lock was free
    finally:
        store.close()


def test_label_and_source_filters_are_served_by_indexes(store: Store) -> None:
    """Schema 2 indexes label and source: a filtered listing reads the matching rows, not the table
    (bench/RESULTS.md, "Filters at 10^5 images", has the times)."""
    store.add_many([item(i) for i in range(20)])
    where, params = store._filters(["L1"], "test:1")
    sql = store._sql(f"SELECT id FROM {{images}} WHERE id > {{p}}{where} ORDER BY id LIMIT {{p}}")
    if store.marker == "?":
        plan = " ".join(str(r[-1]) for r in store._rows(f"EXPLAIN QUERY PLAN {sql}", [0, *params, 50]))
    else:
        with store._conn("plan") as conn:  # type: ignore[attr-defined]
            conn.execute("SET enable_seqscan = off")  # (on 20 rows the planner would rightly scan)
            plan = " ".join(r[0] for r in conn.execute(f"EXPLAIN {sql}", [0, *params, 50]).fetchall())
    assert "images_label" in plan or "images_source" in plan, plan


def test_opening_a_gallery_takes_no_write_lock_when_nothing_is_left_over(tmp_path: Path) -> None:
    """Cleanup looks for leftovers outside any transaction: a process opening the gallery while another holds the
    write lock opens at once (it used to wait out the busy timeout, 10 s, walking images/ under the lock)."""
    import sqlite3
    import time

    from index.index import ImageIndex

    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=DIM) as idx:
        idx.add([item(i) for i in range(5)])
    other = sqlite3.connect(tmp_path / "store.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        with ImageIndex(tmp_path, weights_hash="a" * 64, dim=DIM) as idx:
            assert len(idx) == 5
            opened = time.monotonic() - start
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert opened < 2, f"opening took {opened:.1f} s"


def test_a_delete_killed_before_its_commit_keeps_its_image(tmp_path: Path) -> None:
    """A delete renames the file aside inside its transaction; killed before the commit, the row stands and the file is
    aside. The next open puts it back (it used to remove it: a row without its file, found by kill -9 in CI)."""
    from index.index import ImageIndex

    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=DIM) as idx:
        (added,) = idx.add([item(1)])
        rec = idx.get(added.id)
        assert rec is not None
    path = tmp_path / rec.file
    path.rename(path.with_name(f".{path.name}.deleted"))  # where the killed delete left it
    orphan = path.with_name(".other.png.deleted")  # a committed delete's leftover: no row names other.png
    orphan.write_bytes(b"x")
    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=DIM) as idx:
        assert path.is_file() and not orphan.exists()
        assert idx.check() == [] and idx.image_data(added.id) is not None


def test_a_sql_ascii_database_reads_text_as_text(postgres: Any) -> None:
    """A database made without a UTF-8 locale (initdb in a bare container gives SQL_ASCII) still returns text as
    str: the store asks for UTF-8 on every connection, so labels and metadata do not come back as bytes."""
    import psycopg

    name = f"t_ascii_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'")
    s = open_store(None, postgres.url(name))
    try:
        s.init_meta({"dim": str(DIM)})
        assert s.get_meta("dim") == str(DIM)
        ((image_id, _, _),) = s.add_many([item(3, label="chemise é")])
        rec = s.get(image_id)
        assert rec is not None and rec.label == "chemise é"
    finally:
        s.close()
