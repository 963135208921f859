"""``ImageIndex``: a FAISS cosine index over L2-normalised fc7 vectors, following its durable store.

- The store (``index.store``: SQLite by default, PostgreSQL for replicas) is the truth; each
  process's FAISS index is derived from it and follows its change log, whoever wrote the change.
  Ids come from the store and survive deletes (``IndexIDMap2``).
- Exact search for small collections; a FAISS factory string (e.g. ``PCA256,IVF1024,Flat`` or
  ``HNSW32``) for larger ones, trained on a sample of the stored vectors (``index.factory``). ``auto``
  (the service's default) is exact below ``auto_threshold`` vectors and ``PCA256,IVF<nlist>,Flat``
  above, rebuilt in a background thread when the collection crosses a size step (searches and adds
  go on against the old index meanwhile; changes made during the build are applied before the swap).
- The snapshot ``index.faiss`` (``index.snapshot``) holds the index and the number of the last change
  it holds. Opening loads it and applies the store's newer changes; a missing, stale-format,
  truncated, tampered or foreign snapshot (one that holds changes the store does not have) is
  rebuilt from the store.
- The store records the content hash of the weights that made its vectors; other weights are refused.
- Searches run concurrently; installing changes takes the writer side of a lock, for as long as the
  FAISS calls take (the store is read before).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.errors import IndexError_, WeightsMismatch
from index.factory import AUTO, DEFAULT_DIM, auto_factory, default_nprobe, is_exact, new_faiss, rescore, train_index
from index.rwlock import RWLock
from index.snapshot import SNAPSHOT, read_snapshot, write_snapshot
from index.store import ImageRecord, NewImage, Store, StoreError, StoreUnavailable, open_store
from model.vectors import l2_normalise as normalise

log = logging.getLogger(__name__)

__all__ = ["SNAPSHOT", "AddResult", "Hit", "ImageIndex", "IndexError_", "WeightsMismatch", "normalise"]


class _Cancelled(Exception):
    """A background rebuild stopped because the index is closing."""



@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    record: ImageRecord | None  # None while the store cannot be reached (the FAISS index answered alone)


@dataclass(frozen=True)
class AddResult:
    id: int
    created: bool  # False: an exact duplicate (same SHA-256) was already stored
    near_duplicate_of: int | None = None
    near_duplicate_score: float | None = None


class ImageIndex:
    """The similarity index of one gallery: its store (SQLite in ``directory``, or PostgreSQL at
    ``store_url``) and this process's FAISS index over it, snapshotted to ``directory/index.faiss``.

    The FAISS index follows the store's change log: ``applied_seq`` is the last change it holds.
    ``sync()`` applies what other processes wrote since; with ``follow_interval`` a thread calls it
    whenever the store signals a change (PostgreSQL) or every interval (SQLite). Writes made through
    this object are applied before they return (read-your-writes).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        weights_hash: str,
        dim: int = DEFAULT_DIM,
        factory: str | None = None,
        readonly: bool = False,
        snapshot_every: int = 2000,
        train_size: int = 50_000,
        auto_threshold: int = 20_000,
        rerank: int = 100,
        nprobe: int = 0,
        store_url: str | None = None,
        follow_interval: float | None = None,
    ) -> None:
        self.dir = Path(directory)
        if not readonly:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise IndexError_(f"{self.dir}: cannot create the index directory ({e})") from e
        self.readonly = readonly
        self.snapshot_every = snapshot_every
        self.train_size = train_size
        self.auto_threshold = auto_threshold
        self.rerank = rerank  # candidates re-scored exactly (compressed indexes); 0: FAISS's own scores
        self.nprobe = nprobe  # inverted lists searched (0: nlist / 64, at least 16)
        self._rebuild_thread: threading.Thread | None = None
        self._follow_thread: threading.Thread | None = None
        self.follow_interval = follow_interval
        self._closing = False  # stops a background rebuild and the follower
        self._failed: str | None = None  # a factory whose background build failed
        self.recovered: str | None = None  # why the snapshot was rebuilt at open, if it was
        self._lock = RWLock()  # searches read; installing changes into self.index writes
        self._sync_mutex = threading.RLock()  # one changer of the FAISS index at a time: adds, deletes, syncs, swaps
        self._tombstones: set[int] = set()  # deleted ids an index type cannot remove (HNSW); filtered out
        self._changes_since_snapshot = 0
        self.applied_seq = 0  # the last store change the FAISS index holds
        self.last_sync = time.time()  # when this index was last known to be current with the store
        self.store_error: str | None = None  # why the follower cannot reach the store, while it cannot
        try:
            self.store: Store = open_store(self.dir, store_url, readonly=readonly)
        except StoreUnavailable:
            raise
        except StoreError as e:
            raise IndexError_(str(e)) from e
        self.weights_hash, self.dim, self.configured = self._check_identity(weights_hash, dim, factory)
        self.factory = self._wanted(self.store.count())  # the factory of the index in memory (the snapshot's may differ)
        self._load()
        if not readonly:
            self._maybe_rebuild()
            try:
                orphans = self.store.cleanup()
            except StoreError as e:
                orphans = 0
                log.warning("leftover image files not cleaned up: %s", e)
            if orphans:
                log.info("removed %d orphan image files left by an interrupted add", orphans)
        if follow_interval:
            self._follow_thread = threading.Thread(target=self._follow, name="index-follow", daemon=True)
            self._follow_thread.start()

    # -- identity ------------------------------------------------------------------------------

    def _check_identity(self, weights_hash: str, dim: int, factory: str | None) -> tuple[str, int, str]:
        """(weights hash, dimension, configured factory). A factory given here replaces the stored one
        (the index is rebuilt with it); None keeps the stored one (``auto`` for a new index)."""
        if factory is not None and not is_exact(factory) and factory != AUTO:
            new_faiss(dim, factory)  # a bad factory string fails here, naming it
        stored = self.store.get_meta("weights_hash")
        if stored is None:
            if self.store.count():
                raise IndexError_(f"{self.store.location}: store has images but no weights hash; rebuild the index")
            if self.readonly:
                return weights_hash, dim, factory or AUTO
            # two processes opening an empty store at once agree on the first identity written
            self.store.init_meta({"weights_hash": weights_hash, "dim": str(dim), "factory": factory or AUTO})
            stored = self.store.get_meta("weights_hash")
        if stored != weights_hash:
            raise WeightsMismatch(
                f"the index in {self.store.location} was built with weights {str(stored)[:12]}, but the loaded weights are "
                f"{weights_hash[:12]}: its vectors would be meaningless. Point at the weights that built it, or rebuild it with "
                f"`alexnet index build SOURCE --weights W --index DIR` into an empty index directory (or database)."
            )
        configured = factory or self.store.get_meta("factory") or AUTO
        if not self.readonly and configured != self.store.get_meta("factory"):
            self.store.set_meta("factory", configured)
        return stored, int(self.store.get_meta("dim") or dim), configured

    def _wanted(self, n: int) -> str:
        if self.configured == AUTO:
            return auto_factory(n, self.auto_threshold, self.dim)
        return "flat" if is_exact(self.configured) else self.configured

    # -- snapshot --------------------------------------------------------------------------------

    @property
    def snapshot_path(self) -> Path:
        return self.dir / SNAPSHOT

    def _read_snapshot(self) -> tuple[faiss.Index, int, str] | None:
        p = self.snapshot_path
        if not p.is_file():
            return None
        try:
            index, header = read_snapshot(p)
            if header["weights_hash"] != self.weights_hash or header["dim"] != self.dim:
                raise ValueError("made for other weights or dimension")
            head = self.store.last_seq()
            if int(header["seq"]) > head:
                raise ValueError(f"it holds change {header['seq']}, newer than the store's last ({head}): made from another store")
            return index, int(header["seq"]), str(header["factory"])
        except (ValueError, KeyError, OSError) as e:
            log.warning("snapshot %s unusable (%s); rebuilding from the store", p, e)
            self.recovered = f"{p} was unusable ({e}) and was rebuilt from the store"
            return None

    def save_snapshot(self) -> None:
        """Write ``index.faiss`` atomically, stamped with the last change the index holds."""
        if self.readonly:
            return
        with self._sync_mutex:
            self._save()

    def _save(self) -> None:
        """(Holding the sync mutex: nothing changes the index meanwhile, searches go on.) Tombstones force a rebuild first."""
        if self._tombstones:
            self._replace(*self._fresh(self.factory))
        header = {"seq": self.applied_seq, "weights_hash": self.weights_hash, "dim": self.dim, "factory": self.factory}
        try:
            write_snapshot(self.snapshot_path, self.index, header)
        except OSError as e:
            raise StoreError(f"{self.snapshot_path}: cannot write the index snapshot ({e})") from e
        self._changes_since_snapshot = 0

    def _load(self) -> None:
        snap = self._read_snapshot()
        if snap is None:
            index, seq, tombstones = self._fresh(self.factory)
            self.index, self.applied_seq, self._tombstones = index, seq, tombstones
            self._tune(self.index)
            if not self.readonly and len(self):
                self._save()
            return
        self.index, self.applied_seq, self.factory = snap
        self._tune(self.index)
        caught = self._catch_up(self.index, self._tombstones, self.applied_seq)
        if caught != self.applied_seq:
            log.info("applied changes %d..%d newer than the snapshot", self.applied_seq + 1, caught)
            self._changes_since_snapshot += caught - self.applied_seq
            self.applied_seq = caught

    # -- following the change log ---------------------------------------------------------------------

    def _fetch(
        self, index: faiss.Index, changes: list[tuple[int, str, int]], *, check_indexed: bool, known: dict[int, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What applying ``changes`` to ``index`` takes: (ids to remove, ids to add, their vectors). Reads the
        store only; ``known`` vectors (this process's own adds) are not read again. ``check_indexed``: leave out
        adds the index already holds (after a build, whose reads may have seen changes newer than its start)."""
        deletes = {i for _, op, i in changes if op == "delete"}
        adds = [i for _, op, i in changes if op == "add" and i not in deletes]  # ids are never reused
        if check_indexed and adds:
            indexed = set(faiss.vector_to_array(index.id_map).tolist())  # type: ignore[attr-defined]
            adds = [i for i in adds if i not in indexed]
        known = known or {}
        ids, vecs = self.store.vectors([i for i in adds if i not in known])
        mine = [i for i in adds if i in known]
        if mine:
            ids = np.concatenate([ids, np.array(mine, dtype=np.int64)])
            vecs = np.concatenate([vecs.reshape(-1, self.dim), np.stack([known[i] for i in mine])])
        return np.array(sorted(deletes), dtype=np.int64), ids, vecs

    @staticmethod
    def _install(index: faiss.Index, tombstones: set[int], deletes: np.ndarray, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Apply fetched changes to an index (the caller keeps searches off it)."""
        if len(deletes):
            try:
                index.remove_ids(deletes)  # type: ignore[arg-type]
            except RuntimeError:  # e.g. HNSW cannot remove: filter until the next snapshot rebuilds
                tombstones.update(int(i) for i in deletes)
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids)
            tombstones.difference_update(int(i) for i in ids)

    def _catch_up(self, index: faiss.Index, tombstones: set[int], seq: int) -> int:
        """Bring an index that is not serving yet from change ``seq`` to the store's newest; the last change applied."""
        while True:
            changes = self.store.changes_after(seq)
            if not changes:
                return seq
            self._install(index, tombstones, *self._fetch(index, changes, check_indexed=True))
            seq = changes[-1][0]

    def sync(self) -> int:
        """Apply the changes other processes made since this index last looked; the number applied."""
        with self._sync_mutex:
            n = self._sync()
        if n:
            self._maybe_rebuild()
        return n

    def _sync(self, known: dict[int, np.ndarray] | None = None) -> int:
        """(Holding the sync mutex.) Read the new changes and their vectors, then install them under the writer lock."""
        if not self.index.is_trained and self.store.count():  # the first vectors of a compressed index: train it
            self._replace(*self._fresh(self.factory))
        applied = 0
        while True:
            changes = self.store.changes_after(self.applied_seq)
            if not changes:
                break
            fetched = self._fetch(self.index, changes, check_indexed=False, known=known)
            with self._lock.write():
                self._install(self.index, self._tombstones, *fetched)
                self.applied_seq = changes[-1][0]
            applied += len(changes)
        self.last_sync = time.time()
        if applied:
            self._changes_since_snapshot += applied
            self._maybe_snapshot()
        return applied

    def _follow(self) -> None:
        """The follower thread: wait for a change (or the interval), apply it; record why when the store is out of reach."""
        assert self.follow_interval
        while not self._closing:
            try:
                self.store.wait_for_change(self.follow_interval)
                if self._closing:
                    return
                self.sync()
                if self.store_error is not None:
                    log.info("index %s: the store is reachable again; up to date at change %d", self.dir, self.applied_seq)
                self.store_error = None
            except StoreError as e:
                if self.store_error is None:
                    log.warning("index %s: cannot follow the store: %s", self.dir, e)
                self.store_error = str(e)
                time.sleep(self.follow_interval)
            except Exception as e:
                log.exception("index %s: applying the store's changes failed", self.dir)
                self.store_error = f"applying the store's changes failed: {e}"
                time.sleep(self.follow_interval)

    def follow_status(self) -> dict[str, Any]:
        """How current this index is: the last change applied, seconds since it was last known current, the store's error."""
        return {
            "applied_change": self.applied_seq,
            "following": self._follow_thread is not None,
            "seconds_since_sync": round(max(0.0, time.time() - self.last_sync), 3),
            **({"store_error": self.store_error} if self.store_error else {}),
        }

    # -- building and switching factories -------------------------------------------------------------

    def _build_from_store(self, factory: str, *, cancellable: bool = False) -> tuple[faiss.Index, int]:
        """A new index holding the store's vectors, and the change number read before them: every change up to
        it is in the index; later ones may be (``_catch_up`` sorts that out)."""
        seq = self.store.last_seq()
        index = new_faiss(self.dim, factory)
        if not index.is_trained:
            sample = self._training_sample()
            if len(sample) == 0:
                return index, seq  # trained on the first build with data
            train_index(index, sample)
        for ids, vecs in self.store.iter_vectors():
            if cancellable and self._closing:
                raise _Cancelled
            index.add_with_ids(vecs, ids)
        return index, seq

    def _fresh(self, factory: str, *, cancellable: bool = False) -> tuple[faiss.Index, int, set[int]]:
        """A new index of ``factory`` from the store, caught up: (index, last change, tombstones)."""
        index, seq = self._build_from_store(factory, cancellable=cancellable)
        tombstones: set[int] = set()
        # (an untrained index has nothing to hold yet: it is current with every change)
        seq = self._catch_up(index, tombstones, seq) if index.is_trained else self.store.last_seq()
        self._tune(index)
        return index, seq, tombstones

    def _replace(self, index: faiss.Index, seq: int, tombstones: set[int], factory: str | None = None) -> None:
        """(Holding the sync mutex.) Swap a caught-up index in."""
        with self._lock.write():
            self.index, self.applied_seq, self._tombstones = index, seq, tombstones
            self.factory = factory or self.factory

    def _tune(self, index: faiss.Index) -> None:
        """Search-time parameters of an index."""
        try:
            ivf = faiss.extract_index_ivf(index)
        except RuntimeError:
            return
        ivf.nprobe = min(ivf.nlist, self.nprobe) if self.nprobe else default_nprobe(ivf.nlist)

    def _maybe_rebuild(self) -> None:
        """Start a background rebuild when the wanted factory differs from the one in memory."""
        wanted = self._wanted(len(self))
        if wanted in (self.factory, self._failed) or self.readonly or (self._rebuild_thread and self._rebuild_thread.is_alive()):
            return
        log.info("index %s: rebuilding as %s (%d vectors) in the background", self.dir, wanted, len(self))
        self._rebuild_thread = threading.Thread(target=self._rebuild, args=(wanted,), name="index-rebuild", daemon=True)
        self._rebuild_thread.start()

    def _rebuild(self, factory: str) -> None:
        try:
            new, seq = self._build_from_store(factory, cancellable=True)  # reads the store only; the old index keeps serving
            with self._sync_mutex:  # what was added or deleted during the build, then the swap
                tombstones: set[int] = set()
                seq = self._catch_up(new, tombstones, seq)
                self._tune(new)
                self._replace(new, seq, tombstones, factory)
                try:
                    self._save()
                except StoreError as e:
                    log.warning("%s", e)
            log.info("index %s: now %s", self.dir, factory)
        except _Cancelled:
            log.info("index %s: rebuild as %s stopped by close(); it starts again at the next open", self.dir, factory)
        except Exception:
            self._failed = factory  # not retried after every add; a reopen tries again
            log.exception("index %s: rebuild as %s failed; the old index goes on serving", self.dir, factory)

    def wait_rebuild(self, timeout: float | None = None) -> bool:
        """Wait for a background rebuild; True when none is running."""
        t = self._rebuild_thread
        if t is not None:
            t.join(timeout)
        return t is None or not t.is_alive()

    def _training_sample(self) -> np.ndarray:
        ids = self.store.all_ids()
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        keep = np.sort(np.random.default_rng(0).choice(ids, size=min(len(ids), self.train_size), replace=False))
        parts = [self.store.vectors(keep[i : i + 2048].tolist())[1] for i in range(0, len(keep), 2048)]
        parts = [p for p in parts if len(p)]  # (rows deleted meanwhile are missing)
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    # -- writes -----------------------------------------------------------------------------------

    def add(self, items: Sequence[NewImage], *, near_duplicate_threshold: float | None = None) -> list[AddResult]:
        """Store images durably, then index them (with whatever else changed). Exact duplicates return the existing id."""
        if self.readonly:
            raise IndexError_(f"{self.dir}: the index is open read-only")
        for item in items:
            if item.vector.shape != (self.dim,):
                raise ValueError(f"vector of shape {item.vector.shape}, this index holds {self.dim}-d vectors")
        # the store keeps unit vectors, so that snapshots, replays and rebuilds all add the same thing
        items = [replace(it, vector=normalise(it.vector)[0]) for it in items]
        with self._sync_mutex:
            near: list[tuple[int | None, float | None]] = [(None, None)] * len(items)
            if near_duplicate_threshold is not None and self.index.ntotal:
                with self._lock.read():
                    found = self._search_locked(np.stack([i.vector for i in items]), 1)
                for j, hits in enumerate(found):
                    if hits and hits[0][1] >= near_duplicate_threshold:
                        near[j] = hits[0]
            stored = self.store.add_many(items)  # durable from here on
            self._sync_after_write({i: v for i, created, v in stored if created and v is not None})
        self._maybe_rebuild()
        return [AddResult(i, created, *(near[j] if created else (None, None))) for j, (i, created, _) in enumerate(stored)]

    def delete(self, image_id: int) -> ImageRecord | None:
        """Remove an image; None when the id is unknown (deleting twice is harmless)."""
        if self.readonly:
            raise IndexError_(f"{self.dir}: the index is open read-only")
        with self._sync_mutex:
            rec = self.store.delete(image_id)
            if rec is not None:
                self._sync_after_write({})
        return rec

    def _sync_after_write(self, known: dict[int, np.ndarray]) -> None:
        """Apply a write this process just committed (and anything before it), so the writer sees it at once.
        If the store fails right after the commit, the write stays durable and the follower applies it later."""
        try:
            self._sync(known)
        except StoreError as e:
            log.warning("index %s: a committed change is not applied yet (%s); the follower retries", self.dir, e)

    def _maybe_snapshot(self) -> None:
        if not self.readonly and self._changes_since_snapshot >= self.snapshot_every:
            try:
                self._save()
            except StoreError as e:  # the store is the truth; the snapshot can wait
                log.warning("%s", e)

    # -- reads ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Images this index holds (the store's count as of ``applied_seq``)."""
        return int(self.index.ntotal) - len(self._tombstones)

    def _search_locked(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        n = int(self.index.ntotal)
        if n == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        extra = len(self._tombstones)
        exact = is_exact(self.factory)
        kk = min(n, max(k, 0 if exact else self.rerank) + extra)
        scores, ids = self.index.search(queries, kk)
        if self.index.metric_type == faiss.METRIC_L2:
            scores = 1.0 - scores / 2.0  # squared L2 between unit vectors -> cosine
        out = []
        for q, row_s, row_i in zip(queries, scores, ids, strict=True):
            hits = [
                (int(i), float(s))
                for s, i in zip(row_s, row_i, strict=True)
                if i >= 0 and int(i) not in self._tombstones and np.isfinite(s)
            ]
            if not exact and self.rerank and hits:
                try:
                    hits = self._rescore(q, [i for i, _ in hits])
                except StoreUnavailable:  # the index's own scores until the store is back
                    pass
            out.append(hits[:k])
        return out

    def _rescore(self, query: np.ndarray, ids: list[int]) -> list[tuple[int, float]]:
        """Exact cosines of the candidates from their stored unit vectors, best first."""
        found, vecs = self.store.vectors(ids)
        if not len(found):
            return []
        best, scores = rescore(query, found, vecs)
        return [(int(i), float(sc)) for i, sc in zip(best, scores, strict=True)]

    def search(
        self, queries: np.ndarray, k: int = 10, *, min_score: float | None = None, exclude: set[int] | None = None
    ) -> list[list[Hit]]:
        """The k most similar stored images for each query vector ((n, d) or (d,)), best first. While the store
        cannot be reached, the hits come from the FAISS index alone, with ``record`` None."""
        q = normalise(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"query of dimension {q.shape[1]}, this index holds {self.dim}-d vectors")
        extra = len(exclude or ())
        with self._lock.read():
            raw = self._search_locked(q, k + extra)
        wanted = sorted({i for hits in raw for i, _ in hits})
        records: dict[int, ImageRecord] | None
        try:
            records = self.store.get_many(wanted)  # an id deleted by any process has no record: never returned
        except StoreUnavailable as e:
            log.warning("search without metadata: %s", e)
            records = None
        results = []
        for hits in raw:
            row = [
                Hit(i, min(1.0, max(-1.0, s)), records[i] if records is not None else None)
                for i, s in hits
                if (records is None or i in records) and not (exclude and i in exclude) and (min_score is None or s >= min_score)
            ]
            results.append(row[:k])
        return results

    def get(self, image_id: int) -> ImageRecord | None:
        return self.store.get(image_id)

    def vector(self, image_id: int) -> np.ndarray | None:
        return self.store.vector(image_id)

    def image_data(self, image_id: int) -> tuple[bytes, str] | None:
        """The stored, re-encoded image (bytes, suffix), or None."""
        return self.store.image_data(image_id)

    def stats(self) -> dict[str, Any]:
        with self._lock.read():
            indexed = len(self)
        return {
            "directory": str(self.dir),
            "store": self.store.location,
            "images": indexed,
            "indexed": indexed,
            "dim": self.dim,
            "factory": self.factory,
            "configured_factory": self.configured,
            "rebuilding": bool(self._rebuild_thread and self._rebuild_thread.is_alive()),
            "weights_hash": self.weights_hash,
            "last_change": self.applied_seq,
            "snapshot": self.snapshot_path.is_file(),
            **self.follow_status(),
            **({"recovered": self.recovered} if self.recovered else {}),
        }

    def check(self) -> list[str]:
        """Disagreements between index, store and image files (empty when consistent)."""
        problems = []
        with self._sync_mutex:
            self._sync()
            n_store, n_index = self.store.count(), len(self)
        if n_store != n_index:
            problems.append(f"store has {n_store} images, FAISS index {n_index}")
        return problems + self.store.check()

    def close(self) -> None:
        self._closing = True  # a background rebuild stops at its next batch; the store has everything
        self.store.wake()
        if self._follow_thread is not None:
            self._follow_thread.join(10)
        self.wait_rebuild()
        if not self.readonly and self._changes_since_snapshot:
            try:
                self.save_snapshot()
            except StoreError as e:
                log.warning("%s", e)
        self.store.close()

    def __enter__(self) -> ImageIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
