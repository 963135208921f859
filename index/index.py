"""``ImageIndex``: a FAISS cosine index over L2-normalised fc7 vectors, backed by the durable store.

- Inner product over unit vectors is cosine similarity. Ids come from the store and
  survive deletes (``IndexIDMap2``).
- Exact search (``IndexFlatIP``) by default; a FAISS factory string (e.g.
  ``PCA256,IVF1024,SQ8`` or ``HNSW32``) for collections that outgrow exact search,
  trained on a sample of the stored vectors.
- The FAISS file ``index.faiss`` is a snapshot: one file holding a header (magic, the
  store's last change sequence number, the weights hash, the factory, a checksum) and
  the serialised index, written atomically. Opening loads it and replays the store's
  newer changes; a missing, stale-format, truncated or tampered snapshot is rebuilt
  from the store.
- The index records the content hash of the weights that made its vectors and refuses
  to open with other weights.
- Searches run concurrently; adds and deletes take the writer side of a lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.store import ImageRecord, NewImage, Store, StoreError
from model.files import atomic_write
from model.vectors import l2_normalise as normalise

log = logging.getLogger(__name__)

__all__ = ["AddResult", "Hit", "ImageIndex", "IndexError_", "WeightsMismatch", "normalise"]

SNAPSHOT = "index.faiss"
MAGIC = b"ALEXIDX1"
DEFAULT_DIM = 4096


class IndexError_(RuntimeError):
    """The index cannot be opened or used; the message names the directory or file."""


class WeightsMismatch(IndexError_):
    """The index holds vectors made by other weights than the ones loaded."""


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    record: ImageRecord


@dataclass(frozen=True)
class AddResult:
    id: int
    created: bool  # False: an exact duplicate (same SHA-256) was already stored
    near_duplicate_of: int | None = None
    near_duplicate_score: float | None = None


class _RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _new_faiss(dim: int, factory: str) -> faiss.Index:
    base: faiss.Index
    if factory.lower() in ("", "flat", "exact"):
        base = faiss.IndexFlatIP(dim)
    else:
        try:
            base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise IndexError_(f"invalid FAISS factory string {factory!r}: {str(e).splitlines()[-1]}") from e
    return faiss.IndexIDMap2(base)


class ImageIndex:
    """The similarity index of one directory: ``store.sqlite``, ``images/`` and ``index.faiss``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        weights_hash: str,
        dim: int = DEFAULT_DIM,
        factory: str = "flat",
        readonly: bool = False,
        snapshot_every: int = 2000,
        train_size: int = 50_000,
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
        self._lock = _RWLock()
        self._tombstones: set[int] = set()  # deleted ids an index type cannot remove (HNSW); filtered out
        self._changes_since_snapshot = 0
        try:
            self.store = Store(self.dir, readonly=readonly)
        except StoreError as e:
            raise IndexError_(str(e)) from e
        self.weights_hash, self.dim, self.factory = self._check_identity(weights_hash, dim, factory)
        self.index = self._load()
        if not readonly:
            orphans = self.store.remove_orphan_files()
            if orphans:
                log.info("removed %d orphan image files left by an interrupted add", orphans)

    # -- identity ------------------------------------------------------------------------------

    def _check_identity(self, weights_hash: str, dim: int, factory: str) -> tuple[str, int, str]:
        stored = self.store.get_meta("weights_hash")
        if stored is None:
            if self.store.count():
                raise IndexError_(f"{self.store.path}: store has images but no weights hash; rebuild the index")
            if not self.readonly:
                self.store.set_meta("weights_hash", weights_hash)
                self.store.set_meta("dim", str(dim))
                self.store.set_meta("factory", factory)
            return weights_hash, dim, factory
        if stored != weights_hash:
            raise WeightsMismatch(
                f"the index in {self.dir} was built with weights {stored[:12]}, but the loaded weights are {weights_hash[:12]}: "
                "its vectors would be meaningless. Point at the weights that built it, or rebuild it with "
                f"`alexnet index build SOURCE --weights W --index {self.dir}` (or use an empty index directory)."
            )
        return stored, int(self.store.get_meta("dim") or dim), self.store.get_meta("factory") or factory

    # -- snapshot --------------------------------------------------------------------------------

    @property
    def snapshot_path(self) -> Path:
        return self.dir / SNAPSHOT

    def _read_snapshot(self) -> tuple[faiss.Index, int] | None:
        p = self.snapshot_path
        if not p.is_file():
            return None
        try:
            data = p.read_bytes()
            if data[:8] != MAGIC:
                raise ValueError("bad magic")
            (hlen,) = struct.unpack("<I", data[8:12])
            header = json.loads(data[12 : 12 + hlen])
            body = data[12 + hlen :]
            if hashlib.sha256(body).hexdigest() != header["sha256"]:
                raise ValueError("checksum mismatch (truncated or modified)")
            if header["weights_hash"] != self.weights_hash or header["dim"] != self.dim:
                raise ValueError("made for other weights or dimension")
            index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
            return index, int(header["seq"])
        except (ValueError, KeyError, OSError, RuntimeError, struct.error) as e:
            log.warning("snapshot %s unusable (%s); rebuilding from the store", p, e)
            return None

    def save_snapshot(self) -> None:
        """Write ``index.faiss`` atomically with the store's last change number. Tombstones force a rebuild first."""
        if self.readonly:
            return
        with self._lock.write():
            self._save_locked()

    def _save_locked(self) -> None:
        if self._tombstones:
            self.index = self._build_from_store()
            self._tombstones.clear()
        seq = self.store.last_seq()
        body = faiss.serialize_index(self.index).tobytes()
        header = json.dumps(
            {
                "seq": seq,
                "weights_hash": self.weights_hash,
                "dim": self.dim,
                "factory": self.factory,
                "ntotal": int(self.index.ntotal),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()
        try:
            atomic_write(self.snapshot_path, MAGIC + struct.pack("<I", len(header)) + header + body)
        except OSError as e:
            raise StoreError(f"{self.snapshot_path}: cannot write the index snapshot ({e})") from e
        self._changes_since_snapshot = 0

    def _load(self) -> faiss.Index:
        snap = self._read_snapshot()
        if snap is None:
            index = self._build_from_store()
            if not self.readonly and self.store.count():
                self.index = index
                self._save_locked()
            return index
        index, seq = snap
        changes = self.store.changes_after(seq)
        if changes:
            log.info("replaying %d changes newer than the snapshot", len(changes))
        live = self.store.all_ids() if changes else set()
        adds = [i for _, op, i in changes if op == "add" and i in live]
        deletes = [i for _, op, i in changes if op == "delete"]
        self.index = index
        if deletes:
            self._remove_ids(np.array(deletes, dtype=np.int64))
        if adds:
            indexed = set(faiss.vector_to_array(self.index.id_map).tolist())  # type: ignore[attr-defined]
            for ids, vecs in self.store.iter_vectors(ids=[i for i in adds if i not in indexed]):
                self.index.add_with_ids(vecs, ids)
        return self.index

    def _build_from_store(self) -> faiss.Index:
        index = _new_faiss(self.dim, self.factory)
        if not index.is_trained:
            sample = self._training_sample()
            if len(sample) == 0:
                return index  # trained on the first build with data
            index.train(sample)
        for ids, vecs in self.store.iter_vectors():
            index.add_with_ids(vecs, ids)
        return index

    def _training_sample(self) -> np.ndarray:
        n = self.store.count()
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        rng = np.random.default_rng(0)
        keep = set(rng.choice(sorted(self.store.all_ids()), size=min(n, self.train_size), replace=False).tolist())
        parts = [vecs[np.isin(ids, list(keep))] for ids, vecs in self.store.iter_vectors()]
        return np.concatenate(parts)

    def _remove_ids(self, ids: np.ndarray) -> None:
        try:
            self.index.remove_ids(ids)  # type: ignore[arg-type]
        except RuntimeError:  # e.g. HNSW cannot remove: filter until the next snapshot rebuilds
            self._tombstones.update(int(i) for i in ids)

    # -- writes -----------------------------------------------------------------------------------

    def add(self, items: Sequence[NewImage], *, near_duplicate_threshold: float | None = None) -> list[AddResult]:
        """Store images durably, then index them. Exact duplicates return the existing id."""
        if self.readonly:
            raise IndexError_(f"{self.dir}: the index is open read-only")
        for item in items:
            if item.vector.shape != (self.dim,):
                raise ValueError(f"vector of shape {item.vector.shape}, this index holds {self.dim}-d vectors")
        # the store keeps unit vectors, so that snapshots, replays and rebuilds all add the same thing
        items = [replace(it, vector=normalise(it.vector)[0]) for it in items]
        with self._lock.write():
            near: list[tuple[int | None, float | None]] = [(None, None)] * len(items)
            if near_duplicate_threshold is not None and self.index.ntotal:
                vecs = np.stack([i.vector for i in items])
                for j, hits in enumerate(self._search_locked(vecs, 1)):
                    if hits and hits[0][1] >= near_duplicate_threshold:
                        near[j] = hits[0]
            stored = self.store.add_many(items)  # durable from here on
            new = [(i, v) for i, created, v in stored if created and v is not None]
            if new:
                if not self.index.is_trained:
                    self.index = self._build_from_store()
                else:
                    self.index.add_with_ids(np.stack([v for _, v in new]), np.array([i for i, _ in new], dtype=np.int64))
                self._tombstones.difference_update(i for i, _ in new)
                self._changes_since_snapshot += len(new)
                self._maybe_snapshot()
        return [AddResult(i, created, *(near[j] if created else (None, None))) for j, (i, created, _) in enumerate(stored)]

    def delete(self, image_id: int) -> ImageRecord | None:
        """Remove an image; None when the id is unknown (deleting twice is harmless)."""
        if self.readonly:
            raise IndexError_(f"{self.dir}: the index is open read-only")
        with self._lock.write():
            rec = self.store.delete(image_id)
            if rec is None:
                return None
            self._remove_ids(np.array([image_id], dtype=np.int64))
            self._changes_since_snapshot += 1
            self._maybe_snapshot()
            return rec

    def _maybe_snapshot(self) -> None:
        if self._changes_since_snapshot >= self.snapshot_every:
            try:
                self._save_locked()
            except StoreError as e:  # the store is the truth; the snapshot can wait
                log.warning("%s", e)

    # -- reads ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.store.count()

    def _search_locked(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        n = int(self.index.ntotal)
        if n == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        extra = len(self._tombstones)
        kk = min(n, k + extra)
        scores, ids = self.index.search(queries, kk)
        out = []
        for row_s, row_i in zip(scores, ids, strict=True):
            hits = [
                (int(i), float(s))
                for s, i in zip(row_s, row_i, strict=True)
                if i >= 0 and int(i) not in self._tombstones and np.isfinite(s)
            ]
            out.append(hits[:k])
        return out

    def search(
        self, queries: np.ndarray, k: int = 10, *, min_score: float | None = None, exclude: set[int] | None = None
    ) -> list[list[Hit]]:
        """The k most similar stored images for each query vector ((n, d) or (d,)), best first."""
        q = normalise(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"query of dimension {q.shape[1]}, this index holds {self.dim}-d vectors")
        extra = len(exclude or ())
        with self._lock.read():
            raw = self._search_locked(q, k + extra)
            records = self.store.get_many(sorted({i for hits in raw for i, _ in hits}))
        results = []
        for hits in raw:
            row = [
                Hit(i, min(1.0, max(-1.0, s)), records[i])
                for i, s in hits
                if i in records and not (exclude and i in exclude) and (min_score is None or s >= min_score)
            ]
            results.append(row[:k])
        return results

    def get(self, image_id: int) -> ImageRecord | None:
        return self.store.get(image_id)

    def vector(self, image_id: int) -> np.ndarray | None:
        return self.store.vector(image_id)

    def image_file(self, image_id: int) -> Path | None:
        rec = self.store.get(image_id)
        return None if rec is None else self.dir / rec.file

    def stats(self) -> dict[str, Any]:
        with self._lock.read():
            return {
                "directory": str(self.dir),
                "images": self.store.count(),
                "indexed": int(self.index.ntotal) - len(self._tombstones),
                "dim": self.dim,
                "factory": self.factory,
                "weights_hash": self.weights_hash,
                "last_change": self.store.last_seq(),
                "snapshot": self.snapshot_path.is_file(),
            }

    def check(self) -> list[str]:
        """Disagreements between index, store and image files (empty when consistent)."""
        problems = []
        with self._lock.read():
            n_store, n_index = self.store.count(), int(self.index.ntotal) - len(self._tombstones)
            if n_store != n_index:
                problems.append(f"store has {n_store} images, FAISS index {n_index}")
            missing = self.store.missing_files()
            if missing:
                problems.append(f"{len(missing)} image files missing, e.g. {missing[0]}")
            ok = self.store.integrity_check()
            if ok != "ok":
                problems.append(f"SQLite integrity: {ok}")
        return problems

    def close(self) -> None:
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
