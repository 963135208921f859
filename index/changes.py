"""Bringing a FAISS index up to date with its store: reading changes, applying them, building from scratch.

These functions read the store and change only the FAISS index they are given; ``ImageIndex``
decides when to call them and holds the locks (``index.index``). A change is ``(seq, op, id)`` with
``op`` "add" or "delete", numbered in commit order (``index.store``).
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

from index.errors import Cancelled
from index.factory import new_faiss, train_index
from index.store import Store

__all__ = ["Cancelled", "build_from_store", "catch_up", "fetch", "install", "training_sample"]

Change = tuple[int, str, int]
Fetched = tuple[np.ndarray, np.ndarray, np.ndarray]  # (ids to remove, ids to add, their vectors)


def fetch(
    store: Store,
    index: faiss.Index,
    dim: int,
    changes: list[Change],
    *,
    check_indexed: bool,
    known: dict[int, np.ndarray] | None = None,
    weights: str | None = None,
) -> Fetched:
    """What applying ``changes`` to ``index`` takes. Reads the store only; ``known`` vectors (this process's own
    adds) are not read again; the vectors are those of ``weights`` (None: the gallery's first).
    ``check_indexed``: leave out adds the index already holds (after a build, whose
    reads may have seen changes newer than its start)."""
    deletes = {i for _, op, i in changes if op == "delete"}
    adds = [i for _, op, i in changes if op == "add" and i not in deletes]  # ids are never reused
    if check_indexed and adds:
        indexed = set(faiss.vector_to_array(index.id_map).tolist())  # type: ignore[attr-defined]
        adds = [i for i in adds if i not in indexed]
    known = known or {}
    ids, vecs = store.vectors([i for i in adds if i not in known], weights)
    mine = [i for i in adds if i in known]
    if mine:
        ids = np.concatenate([ids, np.array(mine, dtype=np.int64)])
        vecs = np.concatenate([vecs.reshape(-1, dim), np.stack([known[i] for i in mine])])
    return np.array(sorted(deletes), dtype=np.int64), ids, vecs


def install(index: faiss.Index, tombstones: set[int], deletes: np.ndarray, ids: np.ndarray, vecs: np.ndarray) -> None:
    """Apply fetched changes to an index (the caller keeps searches off it). An id an index type cannot
    remove (HNSW) becomes a tombstone, filtered from results until the next rebuild."""
    if len(deletes):
        try:
            index.remove_ids(deletes)  # type: ignore[arg-type]
        except RuntimeError:
            tombstones.update(int(i) for i in deletes)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids)
        tombstones.difference_update(int(i) for i in ids)


def catch_up(store: Store, index: faiss.Index, dim: int, tombstones: set[int], seq: int, weights: str | None = None) -> int:
    """Bring an index that is not serving yet from change ``seq`` to the store's newest; the last change applied."""
    while True:
        changes = store.changes_after(seq)
        if not changes:
            return seq
        install(index, tombstones, *fetch(store, index, dim, changes, check_indexed=True, weights=weights))
        seq = changes[-1][0]


def training_sample(store: Store, dim: int, size: int, weights: str | None = None) -> np.ndarray:
    """Up to ``size`` stored vectors picked at random (the same ones for the same store), to train an index on."""
    ids = store.all_ids()
    if len(ids) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    keep = np.sort(np.random.default_rng(0).choice(ids, size=min(len(ids), size), replace=False))
    parts = [store.vectors(keep[i : i + 2048].tolist(), weights)[1] for i in range(0, len(keep), 2048)]
    parts = [p for p in parts if len(p)]  # (rows deleted meanwhile are missing)
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)


def build_from_store(
    store: Store, dim: int, factory: str, *, train_size: int, cancelled: Callable[[], bool] = lambda: False, weights: str | None = None
) -> tuple[faiss.Index, int]:
    """A new index holding the store's vectors, and the change number read before them: every change up to it is
    in the index; later ones may be (``catch_up`` sorts that out). Raises ``Cancelled`` when ``cancelled()``."""
    seq = store.last_seq()
    index = new_faiss(dim, factory)
    if not index.is_trained:
        sample = training_sample(store, dim, train_size, weights)
        if len(sample) == 0:
            return index, seq  # trained on the first build with data
        train_index(index, sample)
    for ids, vecs in store.iter_vectors(weights=weights):
        if cancelled():
            raise Cancelled
        index.add_with_ids(vecs, ids)
    return index, seq
