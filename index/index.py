"""``ImageIndex``: a FAISS cosine index over L2-normalised fc7 vectors, following its durable store.

- The store (``index.store``: SQLite by default, PostgreSQL for replicas) is the truth; each
  process's FAISS index is derived from it and follows its change log (``index.changes``,
  ``index.follow``), whoever wrote the change. Ids come from the store and survive deletes.
- ``auto`` (the service's default factory) is exact below ``auto_threshold`` vectors and
  ``PCA256,IVF<nlist>,Flat`` above (``index.factory``), rebuilt in a background thread when the
  collection crosses a size step; searches and adds go on against the old index meanwhile.
- The snapshot (``index.snapshot``) holds the index and the last change it holds; a damaged one, or one of another
  gallery or history, is rebuilt from the store. It serves one weights' vectors: the active, or registered ones
  (``index.identity``, ``index.registry``). Searches run concurrently; installs take a writer lock for FAISS only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import factory as tuning  # (the tuning defaults)
from index.changes import Cancelled, build_from_store, catch_up, fetch, install
from index.consistency import sampled_problems
from index.errors import ImageIndexError, WeightsMismatch
from index.factory import AUTO, DEFAULT_DIM, auto_factory, is_exact, rescore, search_candidates, selector_for, tune
from index.follow import Follower
from index.identity import claim_identity, gallery_id
from index.results import AddResult, Hit
from index.rwlock import RWLock
from index.snapshot import SNAPSHOT, SnapshotFile
from index.store import ImageRecord, NewImage, Store, StoreError, StoreTimeouts, StoreUnavailable, open_store
from model.vectors import l2_normalise as normalise

log = logging.getLogger(__name__)

__all__ = ["SNAPSHOT", "AddResult", "Hit", "ImageIndex", "ImageIndexError", "WeightsMismatch", "normalise"]


class ImageIndex:
    """One gallery: its store (SQLite in ``directory``, or PostgreSQL at ``store_url``) and this process's FAISS
    index over it. ``applied_seq`` is the last change of the store's log the FAISS index holds; ``sync()`` applies
    newer ones, and with ``follow_interval`` a thread does. Writes made here are applied before they return."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        weights_hash: str,
        dim: int = DEFAULT_DIM,
        factory: str | None = None,
        readonly: bool = False,
        snapshot_every: int = tuning.DEFAULT_SNAPSHOT_EVERY,
        train_size: int = 50_000,
        auto_threshold: int = tuning.DEFAULT_AUTO_THRESHOLD,
        rerank: int = tuning.DEFAULT_RERANK,
        nprobe: int = tuning.DEFAULT_NPROBE,
        store_url: str | None = None,
        follow_interval: float | None = None,
        store_timeouts: StoreTimeouts | None = None,
    ) -> None:
        self.dir = Path(directory)
        if not readonly:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ImageIndexError(f"{self.dir}: cannot create the index directory ({e})") from e
        self.readonly = readonly
        self.snapshot_every = snapshot_every
        self.train_size = train_size
        self.auto_threshold = auto_threshold
        self.rerank, self.nprobe = rerank, nprobe  # (what they are: index.factory's DEFAULT_RERANK, DEFAULT_NPROBE)
        self._rebuild_thread: threading.Thread | None = None
        self._closing = False  # stops a background rebuild and the follower
        self._failed: str | None = None  # a factory whose background build failed
        self._lock = RWLock()  # searches read; installing changes into self.index writes
        self._sync_mutex = threading.RLock()  # one changer of the FAISS index at a time: adds, deletes, syncs, swaps
        self._tombstones: set[int] = set()  # deleted ids an index type cannot remove (HNSW); filtered out
        self._changes_since_snapshot = 0
        self.applied_seq = 0  # the last store change the FAISS index holds
        self.last_sync = time.time()  # when this index was last known to be current with the store
        try:
            self.store: Store = open_store(self.dir, store_url, readonly=readonly, timeouts=store_timeouts)
        except StoreUnavailable:
            raise
        except StoreError as e:
            raise ImageIndexError(str(e)) from e
        self.weights_hash, self.dim, self.configured = claim_identity(self.store, weights_hash, dim, factory, readonly=readonly)
        self.gallery_id = gallery_id(self.store, readonly=readonly)
        self.snapshot = SnapshotFile(
            self.dir, self.store, weights_hash=self.weights_hash, dim=self.dim, gallery_id=self.gallery_id, readonly=readonly
        )
        self.factory = self._wanted(self.store.count())  # the factory of the index in memory (the snapshot's may differ)
        self._load()
        if not readonly:
            self._maybe_rebuild()
            try:
                self.store.cleanup()  # files an interrupted add left behind
            except StoreError as e:
                log.warning("leftover image files not cleaned up: %s", e)
        self._follower = Follower(str(self.dir), self.store, self.sync, follow_interval) if follow_interval else None

    def _wanted(self, n: int) -> str:
        if self.configured == AUTO:
            return auto_factory(n, self.auto_threshold, self.dim)
        return "flat" if is_exact(self.configured) else self.configured

    # -- snapshot --------------------------------------------------------------------------------

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
        self.snapshot.write(self.index, self.applied_seq, self.factory)
        self._changes_since_snapshot = 0

    def _load(self) -> None:
        snap = self.snapshot.read()
        if snap is None:
            self.index, self.applied_seq, self._tombstones = self._fresh(self.factory)
            if not self.readonly and len(self):
                self._save()
            return
        index, seq, self.factory = snap
        self.index, self.applied_seq, self._tombstones = self._finish(index, seq)
        if self.applied_seq != seq:
            log.info("applied changes %d..%d newer than the snapshot", seq + 1, self.applied_seq)
            self._changes_since_snapshot += self.applied_seq - seq

    # -- following the change log ---------------------------------------------------------------------

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
            fetched = fetch(self.store, self.index, self.dim, changes, check_indexed=False, known=known, weights=self.weights_hash)
            with self._lock.write():
                install(self.index, self._tombstones, *fetched)
                self.applied_seq = changes[-1][0]
            applied += len(changes)
        self.last_sync = time.time()
        if applied:
            self._changes_since_snapshot += applied
            self._maybe_snapshot()
        return applied

    def follow_status(self) -> dict[str, Any]:
        """How current this index is: the last change applied, seconds since it was last known current, the store's error."""
        return {
            "applied_change": self.applied_seq,
            "following": self._follower is not None,
            "seconds_since_sync": round(max(0.0, time.time() - self.last_sync), 3),
            **({"store_error": self._follower.error} if self._follower and self._follower.error else {}),
        }

    # -- building and switching factories -------------------------------------------------------------

    def _fresh(self, factory: str) -> tuple[faiss.Index, int, set[int]]:
        """A new index of ``factory`` from the store, caught up: (index, last change, tombstones)."""
        return self._finish(*build_from_store(self.store, self.dim, factory, train_size=self.train_size, weights=self.weights_hash))

    def _finish(self, index: faiss.Index, seq: int) -> tuple[faiss.Index, int, set[int]]:
        """A built index, caught up with the changes made since ``seq`` and tuned for searching."""
        tombstones: set[int] = set()
        # (an untrained index has nothing to hold yet: it is current with every change)
        seq = catch_up(self.store, index, self.dim, tombstones, seq, self.weights_hash) if index.is_trained else self.store.last_seq()
        tune(index, self.nprobe)
        return index, seq, tombstones

    def _replace(self, index: faiss.Index, seq: int, tombstones: set[int], factory: str | None = None) -> None:
        """(Holding the sync mutex.) Swap a caught-up index in."""
        with self._lock.write():
            self.index, self.applied_seq, self._tombstones = index, seq, tombstones
            self.factory = factory or self.factory

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
            # reads the store only; the old index keeps serving
            new, seq = build_from_store(self.store, self.dim, factory, train_size=self.train_size, cancelled=lambda: self._closing,
                                        weights=self.weights_hash)  # fmt: skip
            with self._sync_mutex:  # what was added or deleted during the build, then the swap
                self._replace(*self._finish(new, seq), factory)
                try:
                    self._save()
                except StoreError as e:
                    log.warning("%s", e)
            log.info("index %s: now %s", self.dir, factory)
        except Cancelled:
            log.info("index %s: rebuild as %s stopped by close(); it starts again at the next open", self.dir, factory)
        except Exception:
            self._failed = factory  # not retried after every add; a reopen tries again
            log.exception("index %s: rebuild as %s failed; the old index goes on serving", self.dir, factory)

    def wait_rebuild(self, timeout: float | None = None) -> bool:
        """Wait for a background rebuild; True when none is running."""
        if (t := self._rebuild_thread) is not None:
            t.join(timeout)
        return t is None or not t.is_alive()

    # -- writes -----------------------------------------------------------------------------------

    def add(self, items: Sequence[NewImage], *, near_duplicate_threshold: float | None = None) -> list[AddResult]:
        """Store images durably, then index them (with whatever else changed). Exact duplicates return the existing id."""
        if self.readonly:
            raise ImageIndexError(f"{self.dir}: the index is open read-only")
        for item in items:
            if item.vector.shape != (self.dim,):
                raise ValueError(f"vector of shape {item.vector.shape}, this index holds {self.dim}-d vectors")
        # the store keeps unit vectors, so that snapshots, replays and rebuilds all add the same thing
        items = [it.unit() for it in items]
        with self._sync_mutex:
            near: list[tuple[int | None, float | None]] = [(None, None)] * len(items)
            if near_duplicate_threshold is not None and self.index.ntotal:
                with self._lock.read():
                    found = self._search_locked(np.stack([i.vector for i in items]), 1)
                for j, hits in enumerate(found):
                    if hits and hits[0][1] >= near_duplicate_threshold:
                        near[j] = hits[0]
            stored = self.store.add_many(items, self.weights_hash)  # durable from here on
            self._sync_after_write({i: v for i, created, v in stored if created and v is not None})
        self._maybe_rebuild()
        return [AddResult(i, created, *(near[j] if created else (None, None))) for j, (i, created, _) in enumerate(stored)]

    def delete(self, image_id: int) -> ImageRecord | None:
        """Remove an image; None when the id is unknown (deleting twice is harmless)."""
        if self.readonly:
            raise ImageIndexError(f"{self.dir}: the index is open read-only")
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
        except Exception as e:  # the store (StoreError) or FAISS (ImageIndexError, ...): the write stands all the same
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

    def _search_locked(self, queries: np.ndarray, k: int, selector: Any = None) -> list[list[tuple[int, float]]]:
        exact = is_exact(self.factory)
        found = search_candidates(self.index, queries, k, exact=exact, rerank=self.rerank, tombstones=self._tombstones, selector=selector)
        if exact or not self.rerank:
            return [hits[:k] for hits in found]
        try:
            return [self._rescore(q, [i for i, _ in hits])[:k] if hits else [] for q, hits in zip(queries, found, strict=True)]
        except StoreUnavailable:  # the index's own scores until the store is back
            return [hits[:k] for hits in found]

    def _rescore(self, query: np.ndarray, ids: list[int]) -> list[tuple[int, float]]:
        """Exact cosines of the candidates from their stored unit vectors, best first."""
        found, vecs = self.store.vectors(ids, self.weights_hash)
        if not len(found):
            return []
        best, scores = rescore(query, found, vecs)
        return [(int(i), float(sc)) for i, sc in zip(best, scores, strict=True)]

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        min_score: float | None = None,
        exclude: set[int] | None = None,
        labels: Sequence[str] | None = None,
        exclude_labels: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """The k most similar stored images for each query vector ((n, d) or (d,)), best first. ``labels``: only
        images with one of these labels; ``exclude_labels``: none with these. Both filter inside the search, so k
        come back whenever k images match. While the store cannot be reached, the hits come from the FAISS index
        alone, with ``record`` None (and label filters cannot be applied: ``StoreUnavailable``)."""
        q = normalise(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"query of dimension {q.shape[1]}, this index holds {self.dim}-d vectors")
        extra = len(exclude or ())
        selector, keep = None, None
        # while the follower finds the store out of reach, searches do not wait on it for each request
        away = self._away()
        if away and (labels or exclude_labels):
            raise StoreUnavailable(f"label filters need the store, which cannot be reached: {away}")
        if labels or exclude_labels:
            allowed = self.store.ids_with_labels(labels) if labels else None
            if allowed is not None and len(allowed) == 0:
                return [[] for _ in range(len(q))]
            selector, keep = selector_for(allowed, self.store.ids_with_labels(exclude_labels) if exclude_labels else None)
        with self._lock.read():
            raw = self._search_locked(q, k + extra, selector)
        del keep  # (the selector's parts lived until here)
        wanted = sorted({i for hits in raw for i, _ in hits})
        records: dict[int, ImageRecord] | None = None
        try:
            if not away:
                records = self.store.get_many(wanted)  # an id deleted by any process has no record: never returned
        except StoreUnavailable as e:
            log.warning("search without metadata: %s", e)
        results = []
        for hits in raw:
            row = [
                Hit(i, min(1.0, max(-1.0, s)), records[i] if records is not None else None)
                for i, s in hits
                if (records is None or i in records) and not (exclude and i in exclude) and (min_score is None or s >= min_score)
            ]
            results.append(row[:k])
        return results

    def _away(self) -> str | None:
        """Why the follower finds the store out of reach, while it does: reads are refused at once meanwhile."""
        return self._follower.unreachable if self._follower is not None else None

    def _reachable(self) -> None:
        if away := self._away():
            raise StoreUnavailable(away)

    def get(self, image_id: int) -> ImageRecord | None:
        self._reachable()
        return self.store.get(image_id)

    def records(
        self, *, after: int = 0, limit: int = 100, labels: Sequence[str] | None = None, source_prefix: str | None = None
    ) -> list[ImageRecord]:
        """A page of the gallery in id order, after id ``after`` (keyset pagination), filtered by label and source prefix."""
        self._reachable()
        return self.store.list_records(after=after, limit=limit, labels=labels, source_prefix=source_prefix)

    def set_label(self, image_id: int, label: str | None) -> ImageRecord | None:
        """Change an image's label; None when the id is unknown. Searches filter by the new label at once."""
        if self.readonly:
            raise ImageIndexError(f"{self.dir}: the index is open read-only")
        return self.store.set_label(image_id, label)

    def vector(self, image_id: int) -> np.ndarray | None:
        self._reachable()
        return self.store.vector(image_id, self.weights_hash)

    def image_data(self, image_id: int) -> tuple[bytes, str] | None:
        """The stored, re-encoded image (bytes, suffix), or None."""
        self._reachable()
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
            "snapshot": self.snapshot.path.is_file(),
            **self.follow_status(),
            **({"recovered": self.snapshot.recovered} if self.snapshot.recovered else {}),
        }

    def check(self, sample: int = 64) -> list[str]:
        """Disagreements between index, store and image files (empty when consistent): counts, and contents
        (``index.consistency``: up to ``sample`` stored images, each searched with its own stored vector)."""
        with self._sync_mutex:
            self._sync()
            n_store, n_index = self.store.count(), len(self)

            def search(vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
                with self._lock.read():
                    return self._search_locked(vectors, k)

            unfound = sampled_problems(self.store, search, sample, self.weights_hash)
        counts = [f"store has {n_store} images, FAISS index {n_index}"] if n_store != n_index else []
        return counts + unfound + self.store.check()

    def close(self) -> None:
        self._closing = True  # a background rebuild stops at its next batch; the store has everything
        if self._follower is not None:
            self._follower.stop()
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
