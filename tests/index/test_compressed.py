"""Compressed indexes: recall against exact cosine on vectors shaped like fc7, and the ``auto`` switch."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from index.index import ImageIndex, auto_factory
from index.quality import recall_at_k
from tests.index.helpers import item

D = 64


def fc7_like(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors that all lie near one mean direction, in tight clusters, with most of their variance
    in a few directions (as the default model's fc7 do: 256 of 4096 directions hold 99.9% of it)."""
    rng = np.random.default_rng(seed)
    mean = np.abs(rng.normal(size=D))
    basis = rng.normal(size=(12, D))
    z = rng.normal(size=(20, 12))[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, 12))
    x = mean + 0.1 * z @ basis + 0.002 * rng.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def fill(idx: ImageIndex, x: np.ndarray, start: int = 0) -> None:
    for a in range(0, len(x), 500):
        idx.add([item(start + a + j, v) for j, v in enumerate(x[a : a + 500])])


def exact_ids(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k] + 1  # store ids start at 1, in insertion order


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return fc7_like(3000)


@pytest.fixture
def held_rebuild(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """(building, release): a background build of a compressed index sets ``building`` and waits for ``release``."""
    building, release = threading.Event(), threading.Event()
    import index.index

    real_build = index.index.build_from_store

    def held_build(store, dim: int, factory: str, **kw):  # type: ignore[no-untyped-def]
        if factory != "flat":
            building.set()
            assert release.wait(30)
        return real_build(store, dim, factory, **kw)

    monkeypatch.setattr(index.index, "build_from_store", held_build)
    return building, release


def test_auto_factory_steps() -> None:
    assert auto_factory(19_999, 20_000) == "flat"
    assert auto_factory(20_000, 20_000) == "PCA256,IVF512,Flat"
    assert auto_factory(100_000, 20_000) == "PCA256,IVF1024,Flat"
    assert auto_factory(1_000_000, 20_000) == "PCA256,IVF4096,Flat"
    assert auto_factory(600, 300, dim=64) == "PCA16,IVF8,Flat"  # at least 39 training points per list


@pytest.mark.slow
def test_pca_ivf_with_rerank_has_exact_recall_and_cosine_scores(tmp_path: Path, data: np.ndarray) -> None:
    q = data[::100] + 0.01 * np.random.default_rng(1).normal(size=(30, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = exact_ids(data, q, 10)
    with ImageIndex(tmp_path / "rr", weights_hash="a" * 64, dim=D, factory="PCA16,IVF16,Flat", nprobe=4) as idx:
        fill(idx, data)
        hits = idx.search(q, k=10)
        got = np.array([[h.id for h in row] for row in hits])
        assert recall_at_k(truth, got) >= 0.95
        for row, qq in zip(hits, q, strict=True):  # scores are the exact cosines of what is returned
            exact = np.array([idx.vector(h.id) for h in row]) @ qq
            np.testing.assert_allclose([h.score for h in row], exact, atol=1e-5)
        idx.rerank = 0  # FAISS's own order and scores: L2 in PCA space alone ranks as cosine does
        hits = idx.search(q, k=10)
        assert recall_at_k(truth, np.array([[h.id for h in row] for row in hits])) >= 0.95
        for row, qq in zip(hits, q, strict=True):  # 1 - d / 2 is the cosine, up to what PCA drops
            exact = np.array([idx.vector(h.id) for h in row]) @ qq
            np.testing.assert_allclose([h.score for h in row], exact, atol=5e-3)


def test_auto_switches_in_the_background_and_keeps_changes_made_meanwhile(
    tmp_path: Path, data: np.ndarray, held_rebuild: tuple[threading.Event, threading.Event]
) -> None:
    building, release = held_rebuild
    x = data[:1200]
    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=D, auto_threshold=1000) as idx:
        fill(idx, x[:1000])  # the 1000th vector starts the rebuild
        assert building.wait(30)
        assert idx.stats()["factory"] == "flat" and idx.stats()["rebuilding"]
        assert idx.search(x[5], k=1)[0][0].id == 6  # the old index serves meanwhile
        fill(idx, x[1000:], start=1000)  # added and deleted during the build
        for i in (3, 1100):
            assert idx.delete(i) is not None
        release.set()
        assert idx.wait_rebuild(60)
        stats = idx.stats()
        assert stats["factory"] == "PCA16,IVF16,Flat" and stats["indexed"] == 1198 and idx.check() == []
        assert idx.search(x[1150], k=1)[0][0].id == 1151
        found = {h.id for h in idx.search(x[1099], k=20)[0]} | {h.id for h in idx.search(x[2], k=20)[0]}
        assert 1100 not in found and 3 not in found
    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=D, auto_threshold=1000) as idx:  # the snapshot is the new kind
        assert idx.stats()["factory"] == "PCA16,IVF16,Flat" and not idx.stats()["rebuilding"] and idx.check() == []
        assert idx.search(x[1150], k=1)[0][0].id == 1151


def test_a_given_factory_replaces_the_stored_one(tmp_path: Path, data: np.ndarray) -> None:
    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=D, factory="flat") as idx:
        fill(idx, data[:400])
    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=D) as idx:  # none given: the stored one
        assert idx.stats()["configured_factory"] == "flat" and idx.stats()["factory"] == "flat"
    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=D, factory="PCA8,Flat") as idx:
        assert idx.wait_rebuild(60)
        assert idx.stats()["factory"] == "PCA8,Flat" and idx.check() == []
        assert idx.search(data[10], k=1)[0][0].id == 11


def test_close_stops_a_background_rebuild_and_the_next_open_starts_it_again(
    tmp_path: Path, data: np.ndarray, held_rebuild: tuple[threading.Event, threading.Event]
) -> None:
    building, release = held_rebuild
    idx = ImageIndex(tmp_path, weights_hash="a" * 64, dim=D, auto_threshold=1000)
    fill(idx, data[:1000])
    assert building.wait(30)
    threading.Timer(0.2, release.set).start()
    idx.close()  # returns: the build stops at its first batch instead of finishing and swapping
    assert not idx._rebuild_thread.is_alive()  # type: ignore[union-attr]
    release.clear()
    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=D, auto_threshold=1000) as idx:
        assert idx.stats()["factory"] == "flat" and idx.check() == []  # the snapshot is still the exact one
        release.set()
        assert idx.wait_rebuild(60) and idx.stats()["factory"] == "PCA16,IVF16,Flat" and idx.check() == []


def test_a_failing_rebuild_is_not_retried_after_every_add(tmp_path: Path, data: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(index: object, sample: np.ndarray) -> None:
        calls.append(len(sample))
        raise RuntimeError("training failed")

    monkeypatch.setattr("index.changes.train_index", broken)
    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=D, auto_threshold=1000) as idx:
        fill(idx, data[:1000])
        assert idx.wait_rebuild(30)
        fill(idx, data[1000:1100], start=1000)
        assert idx.wait_rebuild(30)
        assert calls == [1000] and idx.stats()["factory"] == "flat"  # tried once; exact search goes on
        assert idx.search(data[1050], k=1)[0][0].id == 1051 and idx.check() == []


def test_label_filter_inside_an_ivf_search_returns_k(tmp_path: Path, data: np.ndarray) -> None:
    """Only 12 of 3000 vectors carry the label, in lists the query's nprobe=1 does not reach: all 12 come back."""
    with ImageIndex(tmp_path, weights_hash="a" * 64, dim=D, factory="PCA16,IVF16,Flat", nprobe=1) as idx:
        fill(idx, data)
        far = np.argsort(data @ data[0])[:12]  # the 12 vectors least like the query
        for i in far:
            idx.set_label(int(i) + 1, "far")
        hits = idx.search(data[0], k=12, labels=["far"])[0]
        assert sorted(h.id for h in hits) == sorted(int(i) + 1 for i in far) and {h.record.label for h in hits} == {"far"}  # type: ignore[union-attr]
        plain = idx.search(data[0], k=12, exclude_labels=["far"])[0]
        assert len(plain) == 12 and not {h.id for h in plain} & {int(i) + 1 for i in far}
