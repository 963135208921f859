"""The durable store: the source of truth of a gallery, and the interface its two implementations share.

A store holds, for every image: its id, metadata, the SHA-256 of the uploaded bytes, its unit
fc7 vector and the re-encoded image; the weights identity (``meta``); and a change log, one
row per add or delete, numbered in commit order. Every FAISS index is derived from it: a
process loads its own snapshot (stamped with the last change it applied) and follows the
change log from there, whoever wrote the change (``index.index``).

- ``SQLiteStore`` (``index.sqlite_store``): the embedded default, ``store.sqlite`` (WAL) plus
  ``images/`` in the index directory; several processes on one machine share it.
- ``PostgresStore`` (``index.pg_store``): for replicas on several machines; the image bytes live
  in the database, so replicas need no shared filesystem.

Both number changes in commit order (SQLite writers are serialised by the database lock,
PostgreSQL writers by an advisory lock held to commit), so a follower that has applied change
``s`` has applied every change up to ``s``. Both store an upload's bytes once: the duplicate
check runs inside the writing transaction.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from index.encoding import encode_for_store
from index.errors import InvalidText, StoreError, StoreUnavailable, WeightsChanged
from model.vectors import l2_normalise

__all__ = [
    "MAX_ID",
    "MAX_LABEL_CHARS",
    "MAX_LABEL_FILTERS",
    "MAX_SOURCE_CHARS",
    "SCHEMA_VERSION",
    "ImageRecord",
    "InvalidText",
    "NewImage",
    "Store",
    "StoreError",
    "StoreTimeouts",
    "StoreUnavailable",
    "check_items",
    "check_text",
    "open_store",
    "redact_url",
]

# both implementations; each migrates an older schema at open (2: indexes on label and source; 3: the weights a gallery
# holds vectors of, their files and the vectors of all but the first: index.registry)
SCHEMA_VERSION = 3
MAX_ID = 2**63 - 1  # ids are positive 64-bit integers (SQLite's INTEGER PRIMARY KEY, PostgreSQL's bigint), never reused


@dataclass(frozen=True)
class StoreTimeouts:
    """How long the PostgreSQL store waits for what another session holds, so that no request hangs on it.
    Each wait that runs out raises ``StoreUnavailable`` (503 with Retry-After in the service)."""

    lock_s: float = 2.0  # a write waits this long for another writer's lock (PostgreSQL lock_timeout)
    statement_s: float = 30.0  # any one statement (statement_timeout)
    # a session of this project left idle inside a transaction (its process frozen mid-add) is ended by the server after
    # this long, which releases the write lock it held (idle_in_transaction_session_timeout)
    idle_in_transaction_s: float = 10.0
    keepalive_s: int = 10  # TCP keepalives: a connection to a vanished host is found dead in about 2x this
    connect_s: float = 5.0  # connecting, and waiting for a free connection of the pool


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
    # the vectors of the same image under the gallery's other weights (staged, or kept for a roll back), by weights hash
    others: dict[str, np.ndarray] | None = None

    @classmethod
    def of(
        cls, image: Image.Image, *, sha256: str, width: int, height: int, source: str | None, label: str | None,
        vector: np.ndarray | None = None,
    ) -> NewImage:  # fmt: skip
        """The one way an add is described: ``image`` re-encoded for the store (``encode_for_store``), its declared
        size and origin. The vector may be filled in later (``dataclasses.replace``), once the batch has run."""
        encoded, suffix = encode_for_store(image)
        vec = np.zeros(0, dtype=np.float32) if vector is None else vector
        return cls(vec, sha256, encoded, suffix, width, height, source, label)

    def unit(self) -> NewImage:
        """The same image with every vector L2-normalised: the store keeps unit vectors, so that snapshots, replays
        and rebuilds all add the same thing."""
        others = {h: l2_normalise(v)[0] for h, v in self.others.items()} if self.others else None
        return dataclasses.replace(self, vector=l2_normalise(self.vector)[0], others=others)


@dataclass(frozen=True)
class ImageRecord:
    id: int
    sha256: str
    source: str | None
    label: str | None
    width: int
    height: int
    file: str  # where the image lives: a path relative to the index directory (SQLite), or "" (in the database)
    created: float
    extra: dict[str, Any]


AddOutcome = tuple[int, bool, np.ndarray | None]  # (id, created, the vector if created)


MAX_LABEL_CHARS = 200  # a label, as stored and as a filter
MAX_LABEL_FILTERS = 50  # labels one query may filter by (each is a parameter of the SQL)
MAX_SOURCE_CHARS = 1000  # where an image came from (a path, or "upload:" and a file name)
# control characters (NUL above all: PostgreSQL's text cannot hold it) and lone surrogates (not encodable as UTF-8)
_BAD_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def check_text(value: str | None, what: str, max_chars: int) -> None:
    """Refuse text that one of the stores could not keep as given: control characters, unpaired surrogates, or
    more than ``max_chars`` characters. The same rule for both stores, so a gallery can move between them."""
    if value is None:
        return
    if len(value) > max_chars:
        raise InvalidText(f"{what} is {len(value)} characters long, more than {max_chars}")
    bad = _BAD_TEXT.search(value)
    if bad is not None:
        raise InvalidText(f"{what} holds the character U+{ord(bad.group()):04X} at position {bad.start()}, which cannot be stored")


def check_items(items: Sequence[NewImage]) -> None:
    """What every store checks before it writes: 1-d float32 vectors (anything else is the caller's mistake), and
    text it can hold."""
    for item in items:
        for vector in (item.vector, *(item.others or {}).values()):
            if vector.dtype != np.float32 or vector.ndim != 1:
                raise ValueError(f"vector must be 1-d float32, got {vector.dtype} {vector.shape}")
        check_text(item.label, "the label", MAX_LABEL_CHARS)
        check_text(item.source, "the source", MAX_SOURCE_CHARS)


class Store(abc.ABC):
    """One gallery's durable rows and change log. Methods raise ``StoreError`` (``StoreUnavailable``
    when the store cannot be reached); ids and change numbers are positive and never reused."""

    location: str  # names the store in messages (a file, or a redacted database URL)

    # -- identity ----------------------------------------------------------------------------

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    @abc.abstractmethod
    def init_meta(self, values: dict[str, str]) -> None:
        """Set the keys that are not set yet, atomically: two processes opening an empty store agree on one identity."""

    # -- writes ------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_many(self, items: Sequence[NewImage], weights: str | None = None) -> list[AddOutcome]:
        """Store new images durably, one change each. For each: (id, created, vector if new).
        A SHA-256 already stored (or earlier in ``items``) returns its id with created False. Each item's ``vector``
        was made by ``weights`` (None: the gallery's first weights), its ``others`` by theirs; ``WeightsChanged`` when
        none of them is the active weights (another process has just switched)."""

    @abc.abstractmethod
    def transaction(self, what: str, *, serialised: bool = True) -> AbstractContextManager[Any]:
        """``with store.transaction(what) as tx: tx.execute(sql, params)``; ``serialised``: in the writers' order
        (the change log's), which a write that must not hold up the adds (a weights file's chunks) leaves out."""

    def column_hash(self) -> str:
        """The weights whose vectors the images table's column holds: the gallery's first, until retired (index.registry)."""
        return self.get_meta("column_hash") or self.get_meta("weights_hash") or ""

    VectorSplit = Callable[[NewImage], tuple[bytes, list[tuple[str, bytes]]]]

    def _vector_split(self, tx: Any, items: Sequence[NewImage], weights: str | None) -> VectorSplit:
        """(In an add's transaction.) Refuse an add without a vector of the active weights (``WeightsChanged``); return
        what splits an item's vectors into the column's bytes (empty: none) and (weights, bytes) for the vectors table."""
        column = self.column_hash()
        weights = weights or column
        row = tx.execute(self._sql("SELECT value FROM {meta} WHERE key = 'weights_hash'"), ()).fetchone()
        active = None if row is None else str(row[0])
        if active is not None and any(active != weights and active not in (item.others or {}) for item in items):
            raise WeightsChanged(f"{self.location}: the gallery now serves weights {active[:12]}, not {weights[:12]}; try again")

        def split(item: NewImage) -> tuple[bytes, list[tuple[str, bytes]]]:
            every = {**(item.others or {}), weights: item.vector}
            col = every.pop(column, None)
            return (b"" if col is None else col.tobytes()), [(h, v.tobytes()) for h, v in every.items()]

        return split

    def _insert_others(self, tx: Any, image_id: int, rows: list[tuple[str, bytes]]) -> None:
        for weights, data in rows:
            tx.execute(self._sql("INSERT INTO {vectors} (weights, image_id, vector) VALUES ({p}, {p}, {p})"), (weights, image_id, data))

    @staticmethod
    def _add_new(
        items: Sequence[NewImage], stored_id: Callable[[str], int | None], insert: Callable[[NewImage], int]
    ) -> list[AddOutcome]:
        """The rule of ``add_many`` for both stores, run inside their writing transaction: each upload's bytes are
        stored once. ``stored_id(sha256)`` looks a hash up in the store; ``insert(item)`` stores a new image with its
        change and returns its id."""
        results: list[AddOutcome] = []
        first_in_batch: dict[str, int] = {}  # sha256 -> id given earlier in this batch
        for item in items:
            found = first_in_batch.get(item.sha256)
            if found is None:
                found = stored_id(item.sha256)
            if found is not None:
                results.append((found, False, None))
                continue
            image_id = first_in_batch[item.sha256] = insert(item)
            results.append((image_id, True, item.vector))
        return results

    @abc.abstractmethod
    def delete(self, image_id: int) -> ImageRecord | None:
        """Remove an image durably, with a change. Returns its record, or None if unknown."""

    @abc.abstractmethod
    def set_label(self, image_id: int, label: str | None) -> ImageRecord | None:
        """Change an image's label (None: no label). Returns the updated record, or None if unknown. No change is
        logged: FAISS indexes hold vectors only, and every process reads labels from the store."""

    # -- reads -------------------------------------------------------------------------------

    @abc.abstractmethod
    def get_many(self, ids: Sequence[int]) -> dict[int, ImageRecord]: ...

    def get(self, image_id: int) -> ImageRecord | None:
        return self.get_many([image_id]).get(image_id)

    @abc.abstractmethod
    def image_data(self, image_id: int) -> tuple[bytes, str] | None:
        """The stored, re-encoded image: (bytes, suffix), or None."""

    def vectors(self, ids: Sequence[int], weights: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,), unit vectors (n, d)), in id order, of those ids with a vector of ``weights`` (None: the first)."""
        in_column, rows = self._in_column(weights), []
        ordered = sorted(int(i) for i in ids)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            marks = ",".join([self.marker] * len(chunk))
            if in_column:
                sql = f"SELECT id, vector FROM {{images}} WHERE id IN ({marks}) AND length(vector) > 0 ORDER BY id"
                rows += self._rows(self._sql(sql), chunk)
            else:
                sql = f"SELECT image_id, vector FROM {{vectors}} WHERE weights = {{p}} AND image_id IN ({marks}) ORDER BY image_id"
                rows += self._rows(self._sql(sql), [weights, *chunk])
        return self._stack(rows)

    def _in_column(self, weights: str | None) -> bool:
        return weights is None or weights == self.column_hash()

    def vector(self, image_id: int, weights: str | None = None) -> np.ndarray | None:
        found, vecs = self.vectors([image_id], weights)
        return vecs[0].copy() if len(found) else None

    # The reads below are the same SQL on both databases: table names and the parameter marker differ.
    images_table: str
    changes_table: str
    meta_table: str
    vectors_table: str  # (weights, image_id, vector) of every weights but the column's
    weights_table: str  # the registry: index.registry
    chunks_table: str  # the weights files, in chunks
    marker: str  # "?" (sqlite3) or "%s" (psycopg)
    source_key = "source"  # source in code-point order, as its index holds it

    @abc.abstractmethod
    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of a query; the database's errors become StoreError / StoreUnavailable."""

    def _sql(self, template: str) -> str:
        return template.format(images=self.images_table, changes=self.changes_table, meta=self.meta_table, vectors=self.vectors_table,
                               weights=self.weights_table, chunks=self.chunks_table, p=self.marker)  # fmt: skip

    @staticmethod
    def _stack(rows: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(id, vector bytes) rows -> (ids (n,), vectors (n, d))."""
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        return np.array([r[0] for r in rows], dtype=np.int64), np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])

    _COLS: str  # the columns ``_record`` reads, in its order

    @staticmethod
    @abc.abstractmethod
    def _record(row: Any) -> ImageRecord: ...

    def _filters(self, labels: Sequence[str] | None, source_prefix: str | None) -> tuple[str, list[Any]]:
        """SQL conditions (each starting with AND) and their parameters: label among ``labels``, source starting
        with ``source_prefix`` (compared exactly, byte for byte: no LIKE, so no wildcards and no case folding)."""
        sql, params = "", []
        for label in labels or ():
            check_text(label, "a label filter", MAX_LABEL_CHARS)
        check_text(source_prefix, "the source filter", MAX_SOURCE_CHARS)
        if labels:
            sql += f" AND label IN ({','.join([self.marker] * len(labels))})"
            params += list(labels)
        if source_prefix:  # a range the index on source serves, then the exact test
            key, p = self.source_key, self.marker
            sql += f" AND {key} >= {p} AND {key} < {p} AND substr(source, 1, length({p})) = {p}"
            params += [source_prefix, source_prefix + "\U0010ffff", source_prefix, source_prefix]
        return sql, params

    def list_records(
        self, *, after: int = 0, limit: int = 100, labels: Sequence[str] | None = None, source_prefix: str | None = None
    ) -> list[ImageRecord]:
        """Up to ``limit`` records with ids above ``after``, in id order (keyset pagination), filtered."""
        where, params = self._filters(labels, source_prefix)
        sql = self._sql(f"SELECT {self._COLS} FROM {{images}} WHERE id > {{p}}{where} ORDER BY id LIMIT {{p}}")
        return [self._record(r) for r in self._rows(sql, [after, *params, limit])]

    def ids_with_labels(self, labels: Sequence[str]) -> np.ndarray:
        """The ids (int64, ascending) of the images whose label is one of ``labels``."""
        where, params = self._filters(labels, None)
        return np.array([r[0] for r in self._rows(self._sql(f"SELECT id FROM {{images}} WHERE 1 = 1{where} ORDER BY id"), params)],
                        dtype=np.int64)  # fmt: skip

    def iter_vectors(self, batch: int = 2048, weights: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (n,), vectors (n, d)) of every image with a vector of ``weights`` (None: the first), in id order, a
        batch at a time."""
        if self._in_column(weights):
            sql, head = self._sql("SELECT id, vector FROM {images} WHERE id > {p} AND length(vector) > 0 ORDER BY id LIMIT {p}"), []
        else:
            sql = self._sql("SELECT image_id, vector FROM {vectors} WHERE weights = {p} AND image_id > {p} ORDER BY image_id LIMIT {p}")
            head = [weights]
        last = -1
        while rows := self._rows(sql, (*head, last, batch)):
            last = int(rows[-1][0])
            yield self._stack(rows)

    def count(self) -> int:
        return int(self._rows(self._sql("SELECT count(*) FROM {images}"))[0][0])

    def all_ids(self) -> np.ndarray:
        """Every stored id, ascending (int64)."""
        return np.array([r[0] for r in self._rows(self._sql("SELECT id FROM {images} ORDER BY id"))], dtype=np.int64)

    def last_seq(self) -> int:
        """The newest change number (0 for none)."""
        return int(self._rows(self._sql("SELECT coalesce(max(seq), 0) FROM {changes}"))[0][0])

    def change_fingerprint(self, seq: int) -> str:
        """What identifies change ``seq`` of this history: its operation, its image id, and for an add the SHA-256 of
        the image it added (ids and change numbers repeat when a store is restored from an older dump and written
        again; the images written after the restore do not). ``"none"`` for change 0."""
        rows = self._rows(self._sql("SELECT op, image_id FROM {changes} WHERE seq = {p}"), (seq,))
        if not rows:
            return "none" if seq == 0 else "missing"
        op, image_id = str(rows[0][0]), int(rows[0][1])
        image = self._rows(self._sql("SELECT sha256 FROM {images} WHERE id = {p}"), (image_id,)) if op == "add" else []
        return hashlib.sha256(f"{seq}:{op}:{image_id}:{image[0][0] if image else '-'}".encode()).hexdigest()[:32]

    def changes_after(self, seq: int, limit: int = 10_000) -> list[tuple[int, str, int]]:
        """(seq, 'add' | 'delete', image id) of the changes after ``seq``, oldest first, at most ``limit``."""
        rows = self._rows(self._sql("SELECT seq, op, image_id FROM {changes} WHERE seq > {p} ORDER BY seq LIMIT {p}"), (seq, limit))
        return [(int(s), str(op), int(i)) for s, op, i in rows]

    # -- following and upkeep -------------------------------------------------------------------

    def __init__(self) -> None:
        self._wakeup = threading.Event()

    def wait_for_change(self, timeout: float) -> None:
        """Block until another process may have written a change, or ``timeout`` seconds. The default
        polls (SQLite: the follower reads the newest change number, an index lookup); PostgreSQL
        wakes on NOTIFY."""
        self._wakeup.wait(timeout)
        self._wakeup.clear()

    def wake(self) -> None:
        """Make a ``wait_for_change`` in another thread return now (used at close)."""
        self._wakeup.set()

    @abc.abstractmethod
    def exclusive(self, name: str) -> AbstractContextManager[bool]:
        """``with store.exclusive(name) as mine``: ``mine`` is True when no other process holds ``name`` (until the
        block ends, or the holder dies: the lock is the operating system's or the database session's)."""

    def cleanup(self) -> int:
        """Remove what an interrupted add left behind (files no row names); the number removed."""
        return 0

    @abc.abstractmethod
    def check(self) -> list[str]:
        """Problems found by a consistency check of the store itself (empty when sound)."""

    @abc.abstractmethod
    def close(self) -> None: ...


# A password in any form libpq reads one: URL user-info (scheme://user:PASSWORD@host), a URL query parameter
# (?password=..., &sslpassword=...), or a keyword DSN (password=... or password='quoted \' value').
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/@?#]*:)[^\s@]*(?=@)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|[^\s&;,]*)", re.IGNORECASE)


def redact_url(text: str) -> str:
    """``text`` (a database URL, a keyword DSN, or a message quoting either) with every password replaced by ``***``:
    for messages and logs."""
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    return _KEYWORD_PASSWORD.sub(r"\g<head>***", text)


def open_store(
    directory: str | os.PathLike[str], url: str | None = None, *, readonly: bool = False, timeouts: StoreTimeouts | None = None
) -> Store:
    """The store of a gallery: PostgreSQL at ``url`` (``postgresql://…``, with ``timeouts``), or SQLite in ``directory``."""
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise StoreError(f"store URL {redact_url(url)!r}: expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
        from index.pg_store import PostgresStore

        return PostgresStore(url, readonly=readonly, timeouts=timeouts or StoreTimeouts())
    from index.sqlite_store import SQLiteStore

    return SQLiteStore(directory, readonly=readonly)
