"""The embedded store: ``store.sqlite`` (WAL) and ``images/`` in the index directory.

Several processes on one machine share it (service workers, the CLI): every write is one
``BEGIN IMMEDIATE`` transaction, which takes SQLite's write lock, so writers run one at a time
across processes and change numbers follow commit order. Image files are content-addressed by
the SHA-256 of the uploaded bytes and are written (temp file, fsync, rename) inside that
transaction, before the row that names them commits: a crash can leave an orphan file (removed
by ``cleanup``), never a row without its file. A delete renames the file aside inside its
transaction and removes it after the commit (or renames it back if the commit fails), so a
concurrent add of the same bytes in another process never loses its file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from index.store import (
    MAX_LABEL_CHARS,
    SCHEMA_VERSION,
    AddOutcome,
    ImageRecord,
    NewImage,
    Store,
    StoreError,
    StoreUnavailable,
    check_items,
    check_text,
)
from model.files import atomic_write_many

log = logging.getLogger(__name__)

__all__ = ["SQLiteStore"]

QUICK_CHECK_MAX_BYTES = 4 * 2**30
BUSY_TIMEOUT_S = 10  # how long a writer waits for another process's transaction before giving up (503)

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
CREATE INDEX IF NOT EXISTS images_label ON images (label);
CREATE INDEX IF NOT EXISTS images_source ON images (source);
CREATE TABLE IF NOT EXISTS weights (
    hash TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('active', 'staged', 'retired')),
    dim INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    file_sha256 TEXT,
    info TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    changed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS weights_chunks (hash TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (hash, n));
CREATE TABLE IF NOT EXISTS vectors (
    weights TEXT NOT NULL, image_id INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (weights, image_id)
);
CREATE INDEX IF NOT EXISTS vectors_image ON vectors (image_id);
"""
# AUTOINCREMENT: ids and change numbers are never reused, even after the newest row is deleted.


def _failure(e: BaseException, what: str) -> StoreError:
    """``StoreUnavailable`` for a lock held too long by another process (worth a retry), else ``StoreError``."""
    text = str(e).lower()
    if isinstance(e, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return StoreUnavailable(f"{what}: the store is busy ({e}); try again")
    return StoreError(f"{what} ({e})")


def image_file(directory: Path, file: str, error: type[Exception]) -> Path:
    """``directory / file`` for a ``file`` column that names a regular file inside ``directory/images`` (no absolute
    path, no ``..``, no link); else ``error``, naming it."""
    rel = Path(file)
    if rel.is_absolute() or not rel.parts or rel.parts[0] != "images" or ".." in rel.parts or len(rel.parts) < 2:
        raise error(f"image file {file!r} is not inside the gallery's images/ directory")
    path = directory / rel
    if path.is_symlink():
        raise error(f"image file {file!r} is a symbolic link")
    return path


class SQLiteStore(Store):
    """SQLite store plus the ``images/`` directory, under one index directory."""

    images_table, changes_table, meta_table, marker = "images", "changes", "meta", "?"
    vectors_table, weights_table, chunks_table = "vectors", "weights", "weights_chunks"

    def __init__(self, directory: str | os.PathLike[str], *, readonly: bool = False) -> None:
        super().__init__()
        self.dir = Path(directory)
        self.images_dir = self.dir / "images"
        self.path = self.dir / "store.sqlite"
        self.location = str(self.path)
        self.readonly = readonly
        try:
            if not readonly:
                self.images_dir.mkdir(parents=True, exist_ok=True)
            elif not self.path.is_file():
                raise StoreError(f"{self.path}: no store here")
            uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")  # readers in other processes never block the writer
                self._db.execute("PRAGMA synchronous = FULL")  # a commit survives power loss, not only a crash
                self._migrate()
            self._db.execute("SELECT count(*) FROM images").fetchone()
            self._check_pages()
            # reads have a connection of their own: in WAL mode they never wait for a writer, in this process
            # (whose writing connection may be waiting for another process's write lock) or another
            self._reader = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{self.path}: cannot open the index store ({e})") from e
        self._lock = threading.RLock()  # the writing connection, used by one thread at a time
        self._read_lock = threading.Lock()  # the reading one

    def _migrate(self) -> None:
        """Create the schema, or bring an older one up to SCHEMA_VERSION (``PRAGMA user_version``). A store already at
        this version is opened without the write lock (another process may hold it for as long as an add takes)."""
        if int(self._db.execute("PRAGMA user_version").fetchone()[0]) == SCHEMA_VERSION:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {version} is newer than this program's {SCHEMA_VERSION}; upgrade it")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            # version 0 -> 1: the same tables, unversioned (stores made before the change log was followed)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _check_pages(self) -> None:
        """``PRAGMA quick_check`` at open (it reads every page), so that a damaged store means not ready
        instead of errors later; skipped above QUICK_CHECK_MAX_BYTES (``alexnet index stats`` runs it always)."""
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
        self.wake()
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    # -- metadata ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction("cannot write metadata") as tx:
            tx.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def init_meta(self, values: dict[str, str]) -> None:
        with self._transaction("cannot write metadata") as tx:
            tx.db.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING", list(values.items()))

    # -- transactions and queries -------------------------------------------------------------

    class _Tx:
        """``with store._transaction(what) as tx``: BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error.
        ``tx.undo`` holds what to reverse on disk before the rollback releases the lock."""

        def __init__(self, store: SQLiteStore, what: str) -> None:
            self.store, self.what = store, what
            self.db = store._db
            self.undo: list[Callable[[], None]] = []
            self.execute = self.db.execute

        def __enter__(self) -> SQLiteStore._Tx:
            self.store._lock.acquire()
            try:
                self.db.execute("BEGIN IMMEDIATE")  # the write lock, across processes
            except sqlite3.Error as e:
                self.store._lock.release()
                raise _failure(e, f"{self.store.path}: {self.what}") from e
            return self

        def _rollback(self) -> None:
            for fn in reversed(self.undo):
                try:
                    fn()
                except OSError as e:
                    log.warning("%s: could not undo a file change: %s", self.store.path, e)
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

        def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
            try:
                if exc_type is None:
                    try:
                        self.db.execute("COMMIT")
                    except sqlite3.Error as e:
                        self._rollback()
                        raise _failure(e, f"{self.store.path}: {self.what}: commit failed") from e
                else:
                    self._rollback()
                    if isinstance(exc, (sqlite3.Error, OSError)):
                        raise _failure(exc, f"{self.store.path}: {self.what}") from exc
            finally:
                self.store._lock.release()

    def _transaction(self, what: str) -> SQLiteStore._Tx:
        if self.readonly:
            raise StoreError(f"{self.path}: the store is open read-only")
        return SQLiteStore._Tx(self, what)

    def transaction(self, what: str, *, serialised: bool = True) -> SQLiteStore._Tx:
        return self._transaction(what)  # (every SQLite write takes the database's one write lock)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            with self._read_lock:
                return self._reader.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise _failure(e, f"{self.path}: read failed") from e

    # -- writes ------------------------------------------------------------------------------

    def image_path(self, sha256: str, suffix: str) -> Path:
        return self.images_dir / sha256[:2] / f"{sha256}{suffix}"

    def add_many(self, items: Sequence[NewImage], weights: str | None = None) -> list[AddOutcome]:
        check_items(items)
        with self._transaction("cannot store images") as tx:
            db, now = tx.db, time.time()
            split = self._vector_split(tx, items, weights)

            def stored_id(sha256: str) -> int | None:
                row = db.execute("SELECT id FROM images WHERE sha256 = ?", (sha256,)).fetchone()
                return None if row is None else int(row[0])

            files: dict[Path, bytes] = {}  # written together before the commit (model.files.atomic_write_many)

            def insert(item: NewImage) -> int:
                path = self.image_path(item.sha256, item.suffix)
                if not path.exists():  # an orphan of the same name has the same bytes (same upload, same encoding)
                    files[path] = item.encoded
                    tx.undo.append(lambda p=path: p.unlink(missing_ok=True))  # type: ignore[misc]
                column, others = split(item)
                cur = db.execute(
                    "INSERT INTO images (sha256, source, label, width, height, file, vector, extra, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (item.sha256, item.source, item.label, item.width, item.height, str(path.relative_to(self.dir)),
                     column, json.dumps(item.extra or {}), now),
                )  # fmt: skip
                image_id = int(cur.lastrowid or 0)
                self._insert_others(tx, image_id, others)
                db.execute("INSERT INTO changes (op, image_id) VALUES ('add', ?)", (image_id,))
                return image_id

            added = self._add_new(items, stored_id, insert)
            atomic_write_many(files)
            return added

    def delete(self, image_id: int) -> ImageRecord | None:
        aside: Path | None = None
        with self._transaction(f"cannot delete image {image_id}") as tx:
            row = tx.db.execute(f"SELECT {self._COLS} FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                return None
            rec = self._record(row)
            tx.db.execute("DELETE FROM images WHERE id = ?", (image_id,))
            tx.db.execute("DELETE FROM vectors WHERE image_id = ?", (image_id,))
            tx.db.execute("INSERT INTO changes (op, image_id) VALUES ('delete', ?)", (image_id,))
            path = self.stored_file(rec.file)
            if path.is_file():
                aside = path.with_name(f".{path.name}.deleted")
                os.replace(path, aside)
                tx.undo.append(lambda: os.replace(aside, path))  # type: ignore[arg-type]
        if aside is not None:
            try:
                aside.unlink(missing_ok=True)
            except OSError as e:  # the row is gone; the leftover is removed by the next cleanup
                log.warning("could not remove %s: %s", aside, e)
        return rec

    def set_label(self, image_id: int, label: str | None) -> ImageRecord | None:
        check_text(label, "the label", MAX_LABEL_CHARS)
        with self._transaction(f"cannot change the label of image {image_id}") as tx:
            tx.db.execute("UPDATE images SET label = ? WHERE id = ?", (label, image_id))
            row = tx.db.execute(f"SELECT {self._COLS} FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else self._record(row)

    # -- reads -------------------------------------------------------------------------------

    _COLS = "id, sha256, source, label, width, height, file, created, extra"

    @staticmethod
    def _record(row: tuple[Any, ...]) -> ImageRecord:
        return ImageRecord(int(row[0]), row[1], row[2], row[3], int(row[4]), int(row[5]), row[6], float(row[7]), json.loads(row[8]))

    def get_many(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        out: dict[int, ImageRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            rows = self._rows(f"SELECT {self._COLS} FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            out.update((int(r[0]), self._record(r)) for r in rows)
        return out

    def stored_file(self, file: str) -> Path:
        """Where a row's ``file`` lives: inside ``images/``, or ``StoreError`` (a row from a tampered or foreign
        database must not make the service read or delete any other file)."""
        return image_file(self.dir, file, StoreError)

    def image_data(self, image_id: int) -> tuple[bytes, str] | None:
        rec = self.get(image_id)
        if rec is None:
            return None
        try:
            return self.stored_file(rec.file).read_bytes(), Path(rec.file).suffix
        except FileNotFoundError:
            return None  # deleted meanwhile
        except OSError as e:
            raise StoreError(f"{self.dir / rec.file}: cannot read the stored image ({e})") from e

    # -- upkeep ------------------------------------------------------------------------------

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        with open(self.dir / f".{name}.lock", "a+b") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def cleanup(self) -> int:
        """Delete image files no row names, and temporary files. The directory is walked outside any transaction;
        then, inside a write transaction (no other process is between writing a file and committing its row
        meanwhile), only the candidates are looked up again and removed, so the write lock is held for as long as
        the leftovers take, not the whole gallery."""
        if self.readonly:
            return 0
        known = {str(r[0]) for r in self._rows("SELECT file FROM images")}
        candidates = [
            p for p in self.images_dir.rglob("*") if p.is_file() and (p.name.startswith(".") or str(p.relative_to(self.dir)) not in known)
        ]
        if not candidates:
            return 0
        removed = restored = 0
        with self._transaction("cannot clean up image files") as tx:

            def named(path: Path) -> bool:
                return tx.db.execute("SELECT 1 FROM images WHERE file = ?", (str(path.relative_to(self.dir)),)).fetchone() is not None

            for p in candidates:
                if not p.exists():
                    continue
                # a delete killed before its commit left its file aside while its row stands: put it back
                original = p.with_name(p.name[1 : -len(".deleted")]) if p.name.startswith(".") and p.name.endswith(".deleted") else None
                if original is not None and named(original) and not original.exists():
                    os.replace(p, original)
                    restored += 1
                elif p.name.startswith(".") or not named(p):
                    p.unlink(missing_ok=True)
                    removed += 1
        if removed or restored:
            log.info("removed %d orphan image files left by an interrupted add, restored %d set aside by an interrupted delete",
                     removed, restored)  # fmt: skip
        return removed

    def check(self) -> list[str]:
        problems = []
        files = [str(r[0]) for r in self._rows("SELECT file FROM images")]
        missing = [f for f in files if not (self.dir / f).is_file()]
        if missing:
            problems.append(f"{len(missing)} image files missing, e.g. {missing[0]}")
        ok = str(self._rows("PRAGMA quick_check")[0][0])
        if ok != "ok":
            problems.append(f"SQLite integrity: {ok}")
        return problems
