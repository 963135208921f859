"""The weights a gallery holds vectors of: one ``active`` (every replica serves it), any number ``staged`` (being
re-embedded, or ready to switch to) and ``retired`` (served before; their vectors are kept, so switching back is
instant, until ``retire`` drops them).

The registry lives in the store, beside the images, so that every replica on every machine sees the same thing:
- the ``weights`` table: hash, state, dimension, the file's size and SHA-256, when it was made and last changed;
- the weights files themselves, in 8 MiB chunks (``weights_chunks``), so that a replica without a shared filesystem
  can load weights it has never seen; each chunk is its own short transaction, so an upload never holds up adds;
- the vectors of every weights but the gallery's first, in the ``vectors`` table (the first's stay in the images
  table's own column, so a gallery made before the registry needs no migration of its rows).

Switching is one serialised transaction (``activate``): it checks that every stored image has a vector of the new
weights, and moves the meta row ``weights_hash`` that every process follows (``index.index``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import StoreError
from index.store import Store

__all__ = [
    "CHUNK_BYTES",
    "WeightsEntry",
    "activate",
    "download",
    "ensure_active",
    "ensure_file",
    "entry",
    "listing",
    "missing_count",
    "missing_ids",
    "put_vectors",
    "register",
    "retire",
    "vector_count",
]

CHUNK_BYTES = 8 * 2**20
STATES = ("active", "staged", "retired")


class RegistryError(StoreError):
    """A lifecycle step that cannot be taken in the registry's present state; the message says why and what to do."""


@dataclass(frozen=True)
class WeightsEntry:
    hash: str
    state: str
    dim: int
    size: int  # bytes of the weights file held in the store (0: none)
    file_sha256: str | None  # None until the whole file is stored
    info: dict[str, Any]
    created: float
    changed: float

    def public(self) -> dict[str, Any]:
        stored = self.file_sha256 is not None
        return {"hash": self.hash, "state": self.state, "dim": self.dim, "file_bytes": self.size, "file_stored": stored,
                "created": self.created, "changed": self.changed, **self.info}  # fmt: skip


_COLS = "hash, state, dim, size, file_sha256, info, created, changed"


def _entry(row: Any) -> WeightsEntry:
    info = json.loads(row[5] or "{}")
    return WeightsEntry(str(row[0]), str(row[1]), int(row[2]), int(row[3]), row[4], info, float(row[6]), float(row[7]))


def listing(store: Store) -> list[WeightsEntry]:
    """Every registered weights, the active first, then by when they were registered."""
    rows = store._rows(store._sql(f"SELECT {_COLS} FROM {{weights}} ORDER BY state != 'active', created"))
    return [_entry(r) for r in rows]


def entry(store: Store, weights_hash: str) -> WeightsEntry | None:
    rows = store._rows(store._sql(f"SELECT {_COLS} FROM {{weights}} WHERE hash = {{p}}"), (weights_hash,))
    return _entry(rows[0]) if rows else None


def resolve(store: Store, prefix: str) -> WeightsEntry:
    """The registered weights whose hash starts with ``prefix`` (at least 6 characters, one match)."""
    found = [e for e in listing(store) if e.hash.startswith(prefix.lower())] if len(prefix) >= 6 else []
    if len(found) != 1:
        known = ", ".join(f"{e.hash[:12]} ({e.state})" for e in listing(store)) or "none"
        raise RegistryError(f"{'no' if not found else 'more than one'} registered weights match {prefix!r}; registered: {known}")
    return found[0]


def ensure_active(store: Store, weights_hash: str, dim: int) -> None:
    """Record the gallery's present weights as active when the registry has none (a gallery made before it, or a
    new one), and which weights' vectors the images table holds."""
    if not store._rows(store._sql("SELECT 1 FROM {weights} WHERE state = 'active'")):
        now = time.time()
        with store.transaction("cannot register the active weights") as tx:
            if tx.execute(store._sql("SELECT 1 FROM {weights} WHERE state = 'active'"), ()).fetchone() is None:
                tx.execute(store._sql("INSERT INTO {weights} (hash, state, dim, created, changed) VALUES ({p}, 'active', {p}, {p}, {p})"),
                           (weights_hash, dim, now, now))  # fmt: skip
    if store.get_meta("column_hash") is None:
        store.init_meta({"column_hash": store.column_hash()})


def upload(store: Store, weights_hash: str, path: str | os.PathLike[str]) -> tuple[int, str] | None:
    """Store a weights file in chunks, each its own transaction outside the writers' lock; then mark it whole.
    (size, SHA-256); None when another process is storing the same weights' file right now (it will mark it)."""
    with store.exclusive(f"upload-{weights_hash[:16]}") as mine:
        if not mine:
            return None
        digest, size, n = hashlib.sha256(), 0, 0
        with store.transaction("cannot store the weights file", serialised=False) as tx:  # what a killed upload left
            tx.execute(store._sql("DELETE FROM {chunks} WHERE hash = {p}"), (weights_hash,))
        with open(path, "rb") as f:
            while data := f.read(CHUNK_BYTES):
                digest.update(data)
                size += len(data)
                with store.transaction("cannot store the weights file", serialised=False) as tx:
                    tx.execute(store._sql("INSERT INTO {chunks} (hash, n, data) VALUES ({p}, {p}, {p})"), (weights_hash, n, data))
                n += 1
        sha = digest.hexdigest()
        with store.transaction("cannot register the weights file") as tx:
            tx.execute(store._sql("UPDATE {weights} SET size = {p}, file_sha256 = {p} WHERE hash = {p}"), (size, sha, weights_hash))
    return size, sha


def ensure_file(store: Store, weights_hash: str, path: str | os.PathLike[str]) -> bool:
    """Store the file of registered weights that has none yet (the active weights of a gallery made before the
    registry, or by ``alexnet index build``), so that replicas elsewhere can load them. True when it was stored now."""
    found = entry(store, weights_hash)
    if found is None or found.file_sha256 is not None:
        return False
    return upload(store, weights_hash, path) is not None


def _chunks(store: Store, weights_hash: str) -> Iterator[bytes]:
    n = 0
    while rows := store._rows(store._sql("SELECT data FROM {chunks} WHERE hash = {p} AND n = {p}"), (weights_hash, n)):
        yield bytes(rows[0][0])
        n += 1


def download(store: Store, weights_hash: str, directory: str | os.PathLike[str]) -> Path:
    """The weights file of ``weights_hash`` in ``directory`` (``<hash>.safetensors``), fetched from the store unless a copy
    with the recorded SHA-256 is there already; written aside, checked, then renamed."""
    found = entry(store, weights_hash)
    if found is None or found.file_sha256 is None:
        raise RegistryError(f"the store holds no weights file for {weights_hash[:12]}; stage it with `alexnet model stage FILE`")
    out = Path(directory) / f"{weights_hash}.safetensors"
    if out.is_file() and _sha256(out) == found.file_sha256:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for data in _chunks(store, weights_hash):
                digest.update(data)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if digest.hexdigest() != found.file_sha256:
            raise RegistryError(f"the weights file of {weights_hash[:12]} in the store is damaged (SHA-256 differs); stage it again")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(CHUNK_BYTES):
            digest.update(data)
    return digest.hexdigest()


def register(store: Store, weights_hash: str, dim: int, path: str | os.PathLike[str], info: dict[str, Any]) -> WeightsEntry:
    """Stage weights: registered as ``staged`` (a retired one becomes staged again: only its missing vectors are
    computed), with its file stored for every replica. The active weights cannot be staged."""
    active = store.get_meta("weights_hash")
    if active is None:
        raise RegistryError(f"{store.location} holds no gallery; build one first (`alexnet index build`)")
    ensure_active(store, active, dim)
    now = time.time()
    with store.transaction("cannot stage the weights") as tx:
        row = tx.execute(store._sql("SELECT state FROM {weights} WHERE hash = {p}"), (weights_hash,)).fetchone()
        if row is not None and row[0] == "active":
            raise RegistryError(f"weights {weights_hash[:12]} are the active ones already")
        if row is None:
            sql = "INSERT INTO {weights} (hash, state, dim, info, created, changed) VALUES ({p}, 'staged', {p}, {p}, {p}, {p})"
            tx.execute(store._sql(sql), (weights_hash, dim, json.dumps(info), now, now))
        else:
            tx.execute(store._sql("UPDATE {weights} SET state = 'staged', changed = {p} WHERE hash = {p}"), (now, weights_hash))
    found = entry(store, weights_hash)
    if found is None or found.file_sha256 is None or found.file_sha256 != _sha256(Path(path)):
        upload(store, weights_hash, path)
    return entry(store, weights_hash)  # type: ignore[return-value]


def _missing_sql(store: Store, weights_hash: str, what: str) -> tuple[str, list[Any]]:
    if weights_hash == store.column_hash():
        return store._sql(f"SELECT {what} FROM {{images}} i WHERE i.id > {{p}} AND length(i.vector) = 0"), []
    sql = (f"SELECT {what} FROM {{images}} i WHERE i.id > {{p}} "
           "AND NOT EXISTS (SELECT 1 FROM {vectors} v WHERE v.weights = {p} AND v.image_id = i.id)")  # fmt: skip
    return store._sql(sql), [weights_hash]


def missing_ids(store: Store, weights_hash: str, after: int = 0, limit: int = 256) -> list[int]:
    """Up to ``limit`` ids above ``after`` of stored images without a vector of ``weights_hash``, ascending."""
    sql, params = _missing_sql(store, weights_hash, "i.id")
    return [int(r[0]) for r in store._rows(sql + store._sql(" ORDER BY i.id LIMIT {p}"), [after, *params, limit])]


def missing_count(store: Store, weights_hash: str) -> int:
    sql, params = _missing_sql(store, weights_hash, "count(*)")
    return int(store._rows(sql, [0, *params])[0][0])


def vector_count(store: Store, weights_hash: str) -> int:
    return store.count() - missing_count(store, weights_hash)


def put_vectors(store: Store, weights_hash: str, ids: list[int], vectors: np.ndarray) -> int:
    """Store vectors of ``weights_hash`` for images that still exist and have none yet, in one transaction; how many."""
    column = weights_hash == store.column_hash()
    written = 0
    with store.transaction("cannot store re-embedded vectors") as tx:
        for image_id, vector in zip(ids, vectors, strict=True):
            data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            if column:
                cur = tx.execute(store._sql("UPDATE {images} SET vector = {p} WHERE id = {p} AND length(vector) = 0"), (data, image_id))
            else:
                cur = tx.execute(store._sql(
                    "INSERT INTO {vectors} (weights, image_id, vector) SELECT {p}, {p}, {p} "
                    "WHERE EXISTS (SELECT 1 FROM {images} WHERE id = {p}) "
                    "AND NOT EXISTS (SELECT 1 FROM {vectors} WHERE weights = {p} AND image_id = {p})"),
                    (weights_hash, image_id, data, image_id, weights_hash, image_id))  # fmt: skip
            written += max(0, cur.rowcount)
    return written


def activate(store: Store, weights_hash: str) -> str:
    """Make ``weights_hash`` the active weights, in one serialised transaction: it must be staged or retired, with
    its file stored and a vector for every stored image. The active ones become retired (vectors kept). Returns
    the hash that was active."""
    now = time.time()
    with store.transaction("cannot activate the weights") as tx:
        row = tx.execute(store._sql("SELECT state, dim, file_sha256 FROM {weights} WHERE hash = {p}"), (weights_hash,)).fetchone()
        if row is None:
            raise RegistryError(f"weights {weights_hash[:12]} are not registered; stage them first")
        if row[0] == "active":
            raise RegistryError(f"weights {weights_hash[:12]} are the active ones already")
        if row[2] is None:
            raise RegistryError(f"the file of weights {weights_hash[:12]} is not fully stored; stage them again")
        sql, params = _missing_sql(store, weights_hash, "count(*)")
        missing = int(tx.execute(sql, [0, *params]).fetchone()[0])
        if missing:
            raise RegistryError(f"{missing} stored images have no vector of {weights_hash[:12]} yet; "
                                f"let `alexnet model reembed {weights_hash[:12]}` finish first")  # fmt: skip
        previous = tx.execute(store._sql("SELECT value FROM {meta} WHERE key = 'weights_hash'"), ()).fetchone()
        tx.execute(store._sql("UPDATE {weights} SET state = 'retired', changed = {p} WHERE state = 'active'"), (now,))
        tx.execute(store._sql("UPDATE {weights} SET state = 'active', changed = {p} WHERE hash = {p}"), (now, weights_hash))
        for key, value in (("weights_hash", weights_hash), ("dim", str(row[1])), ("activated", repr(now))):
            tx.execute(store._sql("UPDATE {meta} SET value = {p} WHERE key = {p}"), (value, key))
            sql = "INSERT INTO {meta} (key, value) SELECT {p}, {p} WHERE NOT EXISTS (SELECT 1 FROM {meta} WHERE key = {p})"
            tx.execute(store._sql(sql), (key, value, key))
    return "" if previous is None else str(previous[0])


def retire(store: Store, weights_hash: str, batch: int = 2048) -> int:
    """Drop a staged or retired weights: its vectors (a batch of images per transaction, so that adds go on), its
    file and its entry. Interrupted, it is finished by running it again. The number of vectors dropped."""
    found = entry(store, weights_hash)
    if found is None:
        raise RegistryError(f"weights {weights_hash[:12]} are not registered")
    if found.state == "active":
        raise RegistryError(f"weights {weights_hash[:12]} are active: activate others first")
    column, dropped, last = weights_hash == store.column_hash(), 0, 0
    with store.transaction("cannot retire the weights") as tx:
        tx.execute(store._sql("UPDATE {weights} SET state = 'retired', changed = {p} WHERE hash = {p}"), (time.time(), weights_hash))
    page = store._sql("SELECT id FROM {images} WHERE id > {p} ORDER BY id LIMIT {p}")
    while ids := [int(r[0]) for r in store._rows(page, (last, batch))]:
        with store.transaction("cannot drop the retired vectors") as tx:
            if column:
                cur = tx.execute(store._sql("UPDATE {images} SET vector = {p} WHERE id >= {p} AND id <= {p} AND length(vector) > 0"),
                                 (b"", ids[0], ids[-1]))  # fmt: skip
            else:
                cur = tx.execute(store._sql("DELETE FROM {vectors} WHERE weights = {p} AND image_id >= {p} AND image_id <= {p}"),
                                 (weights_hash, ids[0], ids[-1]))  # fmt: skip
            dropped += max(0, cur.rowcount)
        last = ids[-1]
    with store.transaction("cannot retire the weights") as tx:
        if column:  # from now on every weights' vectors live in the vectors table
            tx.execute(store._sql("UPDATE {meta} SET value = '-' WHERE key = 'column_hash'"), ())
        tx.execute(store._sql("DELETE FROM {vectors} WHERE weights = {p}"), (weights_hash,))
        tx.execute(store._sql("DELETE FROM {weights} WHERE hash = {p}"), (weights_hash,))
    with store.transaction("cannot drop the weights file", serialised=False) as tx:
        tx.execute(store._sql("DELETE FROM {chunks} WHERE hash = {p}"), (weights_hash,))
    return dropped
