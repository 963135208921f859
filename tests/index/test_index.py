"""ImageIndex: cosine search, ids across deletes, duplicates, snapshots and replay, weights identity."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from index.index import ImageIndex, ImageIndexError, WeightsMismatch, normalise
from index.store import StoreError
from tests.index.helpers import DIM, item

H = "a" * 64


def open_index(path: Path, **kw: object) -> ImageIndex:
    return ImageIndex(path, weights_hash=kw.pop("weights_hash", H), dim=DIM, **kw)  # type: ignore[arg-type]


def test_search_is_cosine_and_ids_survive_deletes(tmp_path: Path) -> None:
    with open_index(tmp_path) as idx:
        ids = [r.id for r in idx.add([item(i) for i in range(6)])]
        assert ids == [1, 2, 3, 4, 5, 6]
        q = item(3).vector * 5.0  # scale does not matter for cosine
        hits = idx.search(q, k=3)[0]
        assert hits[0].id == 4 and hits[0].score == pytest.approx(1.0, abs=1e-5)
        vecs = normalise(np.stack([item(i).vector for i in range(6)]))
        expected = np.argsort(-(vecs @ normalise(q)[0]))[:3] + 1
        assert [h.id for h in hits] == expected.tolist()
        assert idx.delete(4) is not None
        assert 4 not in [h.id for h in idx.search(q, k=6)[0]]
        assert idx.delete(4) is None  # twice is harmless
        (new,) = idx.add([item(99)])
        assert new.id == 7  # ids are never reused
        assert idx.search(item(5).vector, k=1)[0][0].id == 6
        assert idx.check() == []


def test_empty_index_large_k_and_zero_vector(tmp_path: Path) -> None:
    with open_index(tmp_path) as idx:
        assert idx.search(np.ones(DIM), k=5) == [[]]
        idx.add([item(i) for i in range(3)])
        hits = idx.search(np.ones(DIM), k=50)[0]
        assert len(hits) == 3 and all(h.id > 0 for h in hits)
        zero = idx.search(np.zeros(DIM), k=3)[0]
        assert all(np.isfinite(h.score) and h.score == 0.0 for h in zero)
        (z,) = idx.add([item(50, vector=np.zeros(DIM))])
        assert all(np.isfinite(h.score) for h in idx.search(np.ones(DIM), k=10)[0])
        assert z.created


def test_exact_duplicate_returns_existing_id_and_near_duplicates_are_flagged(tmp_path: Path) -> None:
    with open_index(tmp_path) as idx:
        (a,) = idx.add([item(1)])
        (b,) = idx.add([item(1)])
        assert (b.id, b.created) == (a.id, False) and len(idx) == 1
        near = item(2, vector=item(1).vector + 0.01)
        (c,) = idx.add([near], near_duplicate_threshold=0.99)
        assert c.created and c.near_duplicate_of == a.id and c.near_duplicate_score > 0.99


def test_min_score_and_exclude(tmp_path: Path) -> None:
    with open_index(tmp_path) as idx:
        idx.add([item(i) for i in range(5)])
        hits = idx.search(item(0).vector, k=5, min_score=0.999)[0]
        assert [h.id for h in hits] == [1]
        assert 1 not in [h.id for h in idx.search(item(0).vector, k=5, exclude={1})[0]]


def test_reopen_replays_changes_newer_than_the_snapshot(tmp_path: Path) -> None:
    idx = open_index(tmp_path)
    idx.add([item(i) for i in range(4)])
    idx.save_snapshot()
    idx.add([item(i) for i in range(4, 8)])
    idx.delete(2)
    idx.store.close()  # no snapshot at exit: as after a crash
    with open_index(tmp_path) as again:
        assert len(again) == 7 and again.index.ntotal == 7
        assert again.search(item(6).vector, k=1)[0][0].id == 7
        assert 2 not in [h.id for h in again.search(item(1).vector, k=8)[0]]
        assert again.check() == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_snapshot_is_rebuilt_from_the_store(tmp_path: Path, damage: str) -> None:
    with open_index(tmp_path) as idx:
        idx.add([item(i) for i in range(5)])
    snap = tmp_path / "index.faiss"
    data = bytearray(snap.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-5] ^= 0xFF
    else:
        data = bytearray(b"not a snapshot")
    snap.write_bytes(bytes(data))
    with open_index(tmp_path) as idx:
        assert len(idx) == 5 and idx.index.ntotal == 5 and idx.check() == []
        assert "index.faiss was unusable" in idx.stats()["recovered"]  # named in /readyz
        hit = idx.search(item(3).vector, k=1)[0][0]  # rebuilt from stored unit vectors: still cosine
        assert hit.id == 4 and hit.score == pytest.approx(1.0, abs=1e-5)


def test_other_weights_are_refused_with_a_rebuild_hint(tmp_path: Path) -> None:
    with open_index(tmp_path) as idx:
        idx.add([item(1)])
    with pytest.raises(WeightsMismatch, match=r"serves weights aaaaaaaaaaaa.*bbbbbbbbbbbb.*alexnet model stage"):
        open_index(tmp_path, weights_hash="b" * 64)


def test_bad_factory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageIndexError, match="invalid FAISS factory string 'Nonsense99'"):
        open_index(tmp_path, factory="Nonsense99")


@pytest.mark.parametrize("factory", ["HNSW8", "PCA8,Flat", "IVF2,Flat"])
def test_compressed_factories_with_deletes(tmp_path: Path, factory: str) -> None:
    with open_index(tmp_path, factory=factory) as idx:
        idx.add([item(i) for i in range(40)])
        assert idx.search(item(7).vector, k=1)[0][0].id == 8
        idx.delete(8)
        assert 8 not in [h.id for h in idx.search(item(7).vector, k=40)[0]]
        assert idx.stats()["indexed"] == 39
    with open_index(tmp_path, factory=factory) as idx:
        assert 8 not in [h.id for h in idx.search(item(7).vector, k=40)[0]] and len(idx) == 39


@pytest.mark.parametrize("fails", ["the second rename", "the directories' fsync"])
def test_failed_write_leaves_store_index_and_files_agreeing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    """The disk fills up half way through writing a batch's files (one file renamed into place, or all of them):
    neither the rows nor any file of the batch remain, temporary files included."""
    import model.files as files_mod

    with open_index(tmp_path) as idx:
        idx.add([item(i) for i in range(3)])
        real_replace, real_fsync_all, renames = files_mod.os.replace, files_mod._fsync_all, []

        def replace(src: str, dst: Path) -> None:
            renames.append(dst)
            if fails == "the second rename" and len(renames) == 2:
                raise OSError(28, "No space left on device")
            real_replace(src, dst)

        def fsync_all(paths: object) -> None:
            if fails == "the directories' fsync" and renames:
                raise OSError(28, "No space left on device")
            real_fsync_all(paths)  # type: ignore[arg-type]

        monkeypatch.setattr(files_mod.os, "replace", replace)
        monkeypatch.setattr(files_mod, "_fsync_all", fsync_all)
        with pytest.raises(StoreError, match="No space left"):
            idx.add([item(10), item(11)])
        monkeypatch.undo()
        assert len(renames) == 2
        assert len(idx) == 3 and idx.index.ntotal == 3 and idx.check() == []
        assert len([p for p in (tmp_path / "images").rglob("*") if p.is_file()]) == 3
        (r,) = idx.add([item(10)])  # works again afterwards
        assert r.created and idx.check() == []


def test_concurrent_searches_adds_and_deletes(tmp_path: Path) -> None:
    with open_index(tmp_path) as idx:
        idx.add([item(i) for i in range(50)])
        errors: list[BaseException] = []
        stop = threading.Event()
        deleted: set[int] = set()

        def searcher() -> None:
            try:
                while not stop.is_set():
                    for hits in idx.search(np.random.default_rng().normal(size=(4, DIM)), k=10):
                        for h in hits:
                            assert (h.record.id == h.id and h.record.source == f"test:{h.id - 1}") or h.id > 50
                            assert np.isfinite(h.score)
            except BaseException as e:
                errors.append(e)

        def writer() -> None:
            try:
                for i in range(100, 160):
                    idx.add([item(i)])
                    victim = 1 + (i % 50)
                    idx.delete(victim)
                    deleted.add(victim)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=searcher) for _ in range(3)] + [threading.Thread(target=writer)]
        for t in threads:
            t.start()
        threads[-1].join()
        stop.set()
        for t in threads[:-1]:
            t.join()
        assert not errors, errors[0]
        assert idx.check() == []
        found = {h.id for hits in idx.search(np.random.default_rng(1).normal(size=(20, DIM)), k=200) for h in hits}
        assert not found & deleted


def test_duplicates_inside_one_batch_are_stored_once(tmp_path: Path) -> None:
    with open_index(tmp_path) as idx:
        results = idx.add([item(1), item(2), item(1)])
        assert [(r.id, r.created) for r in results] == [(1, True), (2, True), (1, False)]
        assert len(idx) == 2 and idx.check() == []


def test_a_committed_add_whose_faiss_update_fails_is_kept_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An explicit compressed factory on a gallery too small to train it: the add is durable and answered (it used to
    raise, a 500 in the service), and the follower, which retries, logs the failure once, not at every cycle."""
    import logging
    import time

    caplog.set_level(logging.WARNING)
    with open_index(tmp_path, factory="PCA16,IVF64,Flat", follow_interval=0.02) as idx:
        (added,) = idx.add([item(1)])
        assert added.created and idx.store.count() == 1
        time.sleep(0.5)  # about 25 follower cycles
        failures = [r for r in caplog.records if r.name == "index.follow" and "failed" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]
        assert idx.follow_status()["store_error"].startswith("applying the store's changes failed")
