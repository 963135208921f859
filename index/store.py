"""The durable store: SQLite (WAL) rows of id, metadata, hash and vector, plus re-encoded image files.

The store is the source of truth. Every add commits (``synchronous=FULL``) before it is
acknowledged; the FAISS index is a snapshot rebuilt or replayed from the ``changes``
table (see ``index.index``). Image files are content-addressed by the SHA-256 of the
uploaded bytes and are written (temp file, fsync, rename) before the row that names
them commits, so a crash can leave an orphan file (removed at the next open) but never
a row without its file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.files import atomic_write

log = logging.getLogger(__name__)

QUICK_CHECK_MAX_BYTES = 4 * 2**30

__all__ = ["ImageRecord", "NewImage", "Store", "StoreError"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    source TEXT,
    label TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    file TEXT NOT NULL,
    vector BLOB NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'delete')),
    image_id INTEGER NOT NULL
);
"""


class StoreError(RuntimeError):
    """The store cannot be used or written (read-only, disk full, corrupt); the message says which file."""


@dataclass(frozen=True)
class NewImage:
    """What an add needs: the vector, the re-encoded image bytes and their description."""

    vector: np.ndarray  # (d,) float32, L2-normalised
    sha256: str  # of the original bytes (or pixels, for data-set images)
    encoded: bytes  # re-encoded image (never the uploaded bytes)
    suffix: str  # ".png" or ".jpg"
    width: int
    height: int
    source: str | None = None
    label: str | None = None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class ImageRecord:
    id: int
    sha256: str
    source: str | None
    label: str | None
    width: int
    height: int
    file: str
    created: float
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "source": self.source,
            "label": self.label,
            "width": self.width,
            "height": self.height,
            "created": self.created,
            **({"extra": self.extra} if self.extra else {}),
        }


class Store:
    """SQLite store plus the ``images/`` directory, under one index directory."""

    def __init__(self, directory: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.dir = Path(directory)
        self.images_dir = self.dir / "images"
        self.path = self.dir / "store.sqlite"
        self.readonly = readonly
        try:
            if not readonly:
                self.images_dir.mkdir(parents=True, exist_ok=True)
            elif not self.path.is_file():
                raise StoreError(f"{self.path}: no store here")
            uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA busy_timeout = 30000")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")  # a commit survives power loss, not only a crash
                self._db.executescript(SCHEMA)
            self._db.execute("SELECT count(*) FROM images").fetchone()
            self._check_pages()
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{self.path}: cannot open the index store ({e})") from e
        self._lock = threading.RLock()  # one connection, used by one thread at a time

    def _check_pages(self) -> None:
        """``PRAGMA quick_check`` at open (it reads every page), so that a damaged store means not ready
        instead of errors later; skipped above QUICK_CHECK_MAX_BYTES (``alexnet index stats`` runs a full integrity check)."""
        size = self.path.stat().st_size if self.path.is_file() else 0
        if size > QUICK_CHECK_MAX_BYTES:
            log.info("%s: %.1f GB, skipping the page check at open", self.path, size / 1e9)
            return
        result = "; ".join(str(r[0]) for r in self._db.execute("PRAGMA quick_check(5)").fetchall())
        if result != "ok":
            raise StoreError(
                f"{self.path}: the index store is damaged ({result}); restore it from a backup, "
                "or move it away and rebuild the index with `alexnet index build`"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- metadata ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value)
            )

    # -- writes ------------------------------------------------------------------------------

    class _Tx:
        def __init__(self, db: sqlite3.Connection, path: Path) -> None:
            self.db, self.path = db, path

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            try:
                self.db.execute("ROLLBACK" if exc_type else "COMMIT")
            except sqlite3.Error as e:
                if exc_type is None:
                    try:
                        self.db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    raise StoreError(f"{self.path}: commit failed ({e})") from e

    def _transaction(self) -> Store._Tx:
        if self.readonly:
            raise StoreError(f"{self.path}: the store is open read-only")
        return Store._Tx(self._db, self.path)

    def image_path(self, sha256: str, suffix: str) -> Path:
        return self.images_dir / sha256[:2] / f"{sha256}{suffix}"

    def add_many(self, items: Sequence[NewImage]) -> list[tuple[int, bool, np.ndarray | None]]:
        """Store new images durably. For each: (id, created, vector if new). A known SHA-256 returns its id."""
        results: list[tuple[int, bool, np.ndarray | None]] = []
        written: list[Path] = []
        with self._lock:
            try:
                pending = []
                first_in_batch: dict[str, int] = {}  # sha256 -> position of its first occurrence in this batch
                repeats: list[tuple[int, int]] = []  # (position, position of the first occurrence)
                for item in items:
                    row = self._db.execute("SELECT id FROM images WHERE sha256 = ?", (item.sha256,)).fetchone()
                    if row is not None:
                        results.append((int(row[0]), False, None))
                        continue
                    if item.sha256 in first_in_batch:
                        repeats.append((len(results), first_in_batch[item.sha256]))
                        results.append((-1, False, None))
                        continue
                    first_in_batch[item.sha256] = len(results)
                    path = self.image_path(item.sha256, item.suffix)
                    if not path.exists():
                        atomic_write(path, item.encoded)
                        written.append(path)
                    pending.append((len(results), item, path))
                    results.append((-1, True, item.vector))
                with self._transaction() as db:
                    now = time.time()
                    for pos, item, path in pending:
                        if item.vector.dtype != np.float32 or item.vector.ndim != 1:
                            raise ValueError(f"vector must be 1-d float32, got {item.vector.dtype} {item.vector.shape}")
                        cur = db.execute(
                            "INSERT INTO images (sha256, source, label, width, height, file, vector, extra, created) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                item.sha256,
                                item.source,
                                item.label,
                                item.width,
                                item.height,
                                str(path.relative_to(self.dir)),
                                item.vector.tobytes(),
                                json.dumps(item.extra or {}),
                                now,
                            ),
                        )
                        image_id = int(cur.lastrowid or 0)
                        db.execute("INSERT INTO changes (op, image_id) VALUES ('add', ?)", (image_id,))
                        results[pos] = (image_id, True, item.vector)
                for pos, first in repeats:
                    results[pos] = (results[first][0], False, None)
            except BaseException as e:
                for p in written:
                    p.unlink(missing_ok=True)
                if isinstance(e, (sqlite3.Error, OSError)):
                    raise StoreError(f"{self.dir}: cannot store images ({e})") from e
                raise
        return results

    def delete(self, image_id: int) -> ImageRecord | None:
        """Remove a row durably (and then its file). Returns the record, or None if unknown."""
        with self._lock:
            rec = self.get(image_id)
            if rec is None:
                return None
            try:
                with self._transaction() as db:
                    db.execute("DELETE FROM images WHERE id = ?", (image_id,))
                    db.execute("INSERT INTO changes (op, image_id) VALUES ('delete', ?)", (image_id,))
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: cannot delete image {image_id} ({e})") from e
            try:
                (self.dir / rec.file).unlink(missing_ok=True)
            except OSError as e:  # the row is gone; an orphan file is cleaned at the next open
                log.warning("could not remove %s: %s", rec.file, e)
            return rec

    # -- reads -------------------------------------------------------------------------------

    def _record(self, row: tuple[Any, ...]) -> ImageRecord:
        return ImageRecord(int(row[0]), row[1], row[2], row[3], int(row[4]), int(row[5]), row[6], float(row[7]), json.loads(row[8]))

    _COLS = "id, sha256, source, label, width, height, file, created, extra"

    def get(self, image_id: int) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._COLS} FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else self._record(row)

    def get_many(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        if not ids:
            return {}
        with self._lock:
            q = f"SELECT {self._COLS} FROM images WHERE id IN ({','.join('?' * len(ids))})"
            return {int(r[0]): self._record(r) for r in self._db.execute(q, list(ids)).fetchall()}

    def vector(self, image_id: int) -> np.ndarray | None:
        with self._lock:
            row = self._db.execute("SELECT vector FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32).copy()

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM images").fetchone()[0])

    def last_seq(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])

    def changes_after(self, seq: int) -> list[tuple[int, str, int]]:
        with self._lock:
            return [
                (int(s), str(op), int(i))
                for s, op, i in self._db.execute("SELECT seq, op, image_id FROM changes WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
            ]

    def iter_vectors(self, batch: int = 2048, ids: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (n,), vectors (n, d)) in id order, a batch at a time."""
        if ids is not None:
            for start in range(0, len(ids), batch):
                chunk = list(ids[start : start + batch])
                with self._lock:
                    rows = self._db.execute(
                        f"SELECT id, vector FROM images WHERE id IN ({','.join('?' * len(chunk))}) ORDER BY id", chunk
                    ).fetchall()
                if rows:
                    yield np.array([r[0] for r in rows], dtype=np.int64), np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
            return
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute("SELECT id, vector FROM images WHERE id > ? ORDER BY id LIMIT ?", (last, batch)).fetchall()
            if not rows:
                return
            last = int(rows[-1][0])
            yield np.array([r[0] for r in rows], dtype=np.int64), np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    def all_ids(self) -> set[int]:
        with self._lock:
            return {int(r[0]) for r in self._db.execute("SELECT id FROM images").fetchall()}

    def referenced_files(self) -> set[str]:
        with self._lock:
            return {str(r[0]) for r in self._db.execute("SELECT file FROM images").fetchall()}

    def remove_orphan_files(self) -> int:
        """Delete image files no row names (left by a crash between file write and commit)."""
        if self.readonly:
            return 0
        known = self.referenced_files()
        removed = 0
        for p in self.images_dir.rglob("*"):
            if p.is_file() and (p.name.startswith(".") or str(p.relative_to(self.dir)) not in known):
                p.unlink(missing_ok=True)
                removed += 1
        return removed

    def missing_files(self) -> list[str]:
        return [f for f in self.referenced_files() if not (self.dir / f).is_file()]

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA quick_check").fetchone()[0])
