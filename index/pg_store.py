"""The shared store: PostgreSQL, for service replicas on several machines (``ALEXNET_STORE_URL``).

The same rows as the SQLite store (``index.sqlite_store``), plus the re-encoded image bytes, so
that replicas need no shared filesystem. Tables are prefixed ``alexnet_`` and one database holds
one gallery. Writers take a transaction-level advisory lock before they touch the tables, so
writes run one at a time and change numbers (a sequence) follow commit order: a follower that
has applied change ``s`` has seen every change before it. Each write ends with
``NOTIFY alexnet_changes`` (delivered at commit), which wakes the followers' ``LISTEN``
connections; they also poll, so a lost connection only slows them down.

Connection failures (the server down, a network cut) raise ``StoreUnavailable``; the pool
replaces broken connections by itself, so the store recovers when the server is back. Nothing waits
without a bound (``StoreTimeouts``): a write that waits past ``lock_s`` for another session's lock,
or a statement past ``statement_s``, raises ``StoreUnavailable`` too; the server ends this project's
sessions left idle in a transaction; TCP keepalives find connections to a vanished host dead.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from index.store import (
    MAX_LABEL_CHARS,
    SCHEMA_VERSION,
    AddOutcome,
    ImageRecord,
    NewImage,
    Store,
    StoreError,
    StoreTimeouts,
    StoreUnavailable,
    check_items,
    check_text,
    redact_url,
)

log = logging.getLogger(__name__)

__all__ = ["PostgresStore"]

CHANNEL = "alexnet_changes"
WRITE_LOCK = 0x616C6578  # advisory lock key held by every writing transaction ("alex")
SCHEMA_LOCK = 0x616C6579  # held while the schema is created or migrated

MIGRATIONS: dict[int, list[str]] = {  # version -> statements that bring version - 1 to it
    1: [
        "CREATE TABLE IF NOT EXISTS alexnet_meta (key text PRIMARY KEY, value text NOT NULL)",
        """CREATE TABLE IF NOT EXISTS alexnet_images (
            id bigserial PRIMARY KEY,
            sha256 text NOT NULL UNIQUE,
            source text,
            label text,
            width integer NOT NULL,
            height integer NOT NULL,
            suffix text NOT NULL,
            data bytea NOT NULL,
            vector bytea NOT NULL,
            extra jsonb NOT NULL DEFAULT '{}',
            created double precision NOT NULL
        )""",
        # float32 vectors and PNG/JPEG bytes do not compress: store them out of line without trying
        "ALTER TABLE alexnet_images ALTER COLUMN vector SET STORAGE EXTERNAL, ALTER COLUMN data SET STORAGE EXTERNAL",
        """CREATE TABLE IF NOT EXISTS alexnet_changes (
            seq bigserial PRIMARY KEY,
            op text NOT NULL CHECK (op IN ('add', 'delete')),
            image_id bigint NOT NULL
        )""",
    ],
    2: [  # filtered listings and searches read the matching rows only; source in code-point order, for prefix ranges
        "CREATE INDEX IF NOT EXISTS alexnet_images_label ON alexnet_images (label)",
        'CREATE INDEX IF NOT EXISTS alexnet_images_source ON alexnet_images (source COLLATE "C")',
    ],
    3: [  # the weights a gallery holds vectors of (index.registry), their files, and the vectors of all but the first
        """CREATE TABLE IF NOT EXISTS alexnet_weights (
            hash text PRIMARY KEY,
            state text NOT NULL CHECK (state IN ('active', 'staged', 'retired')),
            dim integer NOT NULL,
            size bigint NOT NULL DEFAULT 0,
            file_sha256 text,
            info text NOT NULL DEFAULT '{}',
            created double precision NOT NULL,
            changed double precision NOT NULL
        )""",
        "CREATE TABLE IF NOT EXISTS alexnet_weights_chunks (hash text NOT NULL, n integer NOT NULL, data bytea NOT NULL, "
        "PRIMARY KEY (hash, n))",
        "ALTER TABLE alexnet_weights_chunks ALTER COLUMN data SET STORAGE EXTERNAL",
        """CREATE TABLE IF NOT EXISTS alexnet_vectors (
            weights text NOT NULL, image_id bigint NOT NULL, vector bytea NOT NULL, PRIMARY KEY (weights, image_id)
        )""",
        "ALTER TABLE alexnet_vectors ALTER COLUMN vector SET STORAGE EXTERNAL",
        "CREATE INDEX IF NOT EXISTS alexnet_vectors_image ON alexnet_vectors (image_id)",
    ],
}
assert max(MIGRATIONS) == SCHEMA_VERSION


class PostgresStore(Store):
    """A gallery in one PostgreSQL database, through a psycopg 3 connection pool."""

    images_table, changes_table, meta_table, marker = "alexnet_images", "alexnet_changes", "alexnet_meta", "%s"
    vectors_table, weights_table, chunks_table = "alexnet_vectors", "alexnet_weights", "alexnet_weights_chunks"
    source_key = 'source COLLATE "C"'

    def __init__(self, url: str, *, readonly: bool = False, pool_size: int = 8, timeouts: StoreTimeouts | None = None) -> None:
        super().__init__()
        import psycopg
        from psycopg_pool import ConnectionPool

        self._psycopg = psycopg
        self.url = url
        t = self.timeouts = timeouts or StoreTimeouts()
        ms = lambda seconds: max(1, round(seconds * 1000))  # noqa: E731
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(t.connect_s)),
            "client_encoding": "utf8",  # text as str even where the database is SQL_ASCII (initdb without a UTF-8 locale)
            "options": f"-c lock_timeout={ms(t.lock_s)} -c statement_timeout={ms(t.statement_s)} "
            f"-c idle_in_transaction_session_timeout={ms(t.idle_in_transaction_s)}",
            "keepalives": 1,
            "keepalives_idle": t.keepalive_s,
            "keepalives_interval": max(1, t.keepalive_s // 2),
            "keepalives_count": 2,
        }
        self.location = f"PostgreSQL {redact_url(url)}"
        self.readonly = readonly
        self._listener: Any = None  # the LISTEN connection, used by the follower thread only
        self._closed = False
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, **self._connect_kwargs},
            check=ConnectionPool.check_connection,  # a connection broken by a server restart is replaced, not handed out
            timeout=t.connect_s,
            open=False,
            name="alexnet-store",
        )
        try:
            self._pool.open(wait=True, timeout=t.connect_s)
        except psycopg.Error as e:
            self._pool.close()
            raise StoreUnavailable(f"{self.location}: cannot connect ({e})") from e
        try:
            if not readonly:
                self._migrate()
            elif self._schema_version() == 0:
                raise StoreError(f"{self.location}: no gallery in this database")
        except BaseException:
            self._pool.close()
            raise

    # -- connections ----------------------------------------------------------------------------

    @contextmanager
    def _conn(self, what: str) -> Iterator[Any]:
        """A pooled connection; psycopg's errors become StoreUnavailable (cannot connect) or StoreError."""
        psycopg = self._psycopg
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as e:  # lock_timeout, statement_timeout
            raise StoreUnavailable(f"{self.location}: {what}: another session holds the gallery's lock or the database is too slow "
                                   f"({str(e).strip()})") from e  # fmt: skip
        except psycopg.OperationalError as e:  # includes the pool's timeout
            raise StoreUnavailable(f"{self.location}: {what}: the database cannot be reached ({str(e).strip()})") from e
        except psycopg.Error as e:
            raise StoreError(f"{self.location}: {what} ({str(e).strip()})") from e

    @contextmanager
    def _write(self, what: str) -> Iterator[Any]:
        """A writing transaction, serialised with every other writer by the advisory lock; NOTIFY at commit."""
        if self.readonly:
            raise StoreError(f"{self.location}: the store is open read-only")
        with self._conn(what) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            yield conn
            conn.execute(f"NOTIFY {CHANNEL}")

    @contextmanager
    def transaction(self, what: str, *, serialised: bool = True) -> Iterator[Any]:
        if not serialised:
            if self.readonly:
                raise StoreError(f"{self.location}: the store is open read-only")
            with self._conn(what) as conn, conn.transaction():
                yield conn
            return
        with self._write(what) as conn:
            yield conn

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A session-level advisory lock on a connection of its own (released when this process's session ends)."""
        try:
            conn = self._psycopg.connect(self.url, autocommit=True, **self._connect_kwargs)
        except self._psycopg.Error as e:
            raise StoreUnavailable(f"{self.location}: cannot connect ({str(e).strip()})") from e
        with conn:
            row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (name,)).fetchone()
            yield bool(row and row[0])

    def _schema_version(self) -> int:
        with self._conn("cannot read the schema version") as conn:
            if conn.execute("SELECT to_regclass('alexnet_meta')").fetchone()[0] is None:
                return 0
            row = conn.execute("SELECT value FROM alexnet_meta WHERE key = 'schema_version'").fetchone()
            return int(row[0]) if row else 0

    def _migrate(self) -> None:
        """Create the tables, or migrate them from an older version, once, under an advisory lock."""
        with self._conn("cannot create or migrate the schema") as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            exists = conn.execute("SELECT to_regclass('alexnet_meta')").fetchone()[0] is not None
            row = conn.execute("SELECT value FROM alexnet_meta WHERE key = 'schema_version'").fetchone() if exists else None
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.location}: schema version {version} is newer than this program's {SCHEMA_VERSION}; upgrade it")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v]:
                    conn.execute(statement)
                log.info("%s: schema at version %d", self.location, v)
            conn.execute(
                "INSERT INTO alexnet_meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )

    def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            try:
                self._listener.close()
            except Exception:
                pass
        self._pool.close()

    # -- metadata ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._conn("cannot read metadata") as conn:
            row = conn.execute("SELECT value FROM alexnet_meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write("cannot write metadata") as conn:
            conn.execute(
                "INSERT INTO alexnet_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value)
            )

    def init_meta(self, values: dict[str, str]) -> None:
        with self._write("cannot write metadata") as conn:
            for key, value in values.items():
                conn.execute("INSERT INTO alexnet_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, value))

    # -- writes --------------------------------------------------------------------------------

    def add_many(self, items: Sequence[NewImage], weights: str | None = None) -> list[AddOutcome]:
        check_items(items)
        with self._write("cannot store images") as conn:
            now = time.time()
            split = self._vector_split(conn, items, weights)

            def stored_id(sha256: str) -> int | None:
                row = conn.execute("SELECT id FROM alexnet_images WHERE sha256 = %s", (sha256,)).fetchone()
                return None if row is None else int(row[0])

            def insert(item: NewImage) -> int:
                column, others = split(item)
                (image_id,) = conn.execute(
                    "INSERT INTO alexnet_images (sha256, source, label, width, height, suffix, data, vector, extra, created) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (item.sha256, item.source, item.label, item.width, item.height, item.suffix, item.encoded,
                     column, json.dumps(item.extra or {}), now),
                ).fetchone()  # fmt: skip
                self._insert_others(conn, int(image_id), others)
                conn.execute("INSERT INTO alexnet_changes (op, image_id) VALUES ('add', %s)", (image_id,))
                return int(image_id)

            return self._add_new(items, stored_id, insert)

    def delete(self, image_id: int) -> ImageRecord | None:
        with self._write(f"cannot delete image {image_id}") as conn:
            row = conn.execute(f"DELETE FROM alexnet_images WHERE id = %s RETURNING {self._COLS}", (image_id,)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM alexnet_vectors WHERE image_id = %s", (image_id,))
            conn.execute("INSERT INTO alexnet_changes (op, image_id) VALUES ('delete', %s)", (image_id,))
        return self._record(row)

    def set_label(self, image_id: int, label: str | None) -> ImageRecord | None:
        check_text(label, "the label", MAX_LABEL_CHARS)
        with self._write(f"cannot change the label of image {image_id}") as conn:
            row = conn.execute(f"UPDATE alexnet_images SET label = %s WHERE id = %s RETURNING {self._COLS}", (label, image_id)).fetchone()
        return None if row is None else self._record(row)

    # -- reads ---------------------------------------------------------------------------------

    _COLS = "id, sha256, source, label, width, height, suffix, created, extra"

    @staticmethod
    def _record(row: Sequence[Any]) -> ImageRecord:
        extra = row[8] if isinstance(row[8], dict) else json.loads(row[8])
        return ImageRecord(int(row[0]), row[1], row[2], row[3], int(row[4]), int(row[5]), "", float(row[7]), extra)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._conn("read failed") as conn:
            return list(conn.execute(sql, params).fetchall())

    def get_many(self, ids: Sequence[int]) -> dict[int, ImageRecord]:
        if not ids:
            return {}
        rows = self._rows(f"SELECT {self._COLS} FROM alexnet_images WHERE id = ANY(%s)", (list(ids),))
        return {int(r[0]): self._record(r) for r in rows}

    def image_data(self, image_id: int) -> tuple[bytes, str] | None:
        rows = self._rows("SELECT data, suffix FROM alexnet_images WHERE id = %s", (image_id,))
        return (bytes(rows[0][0]), str(rows[0][1])) if rows else None

    # -- following -------------------------------------------------------------------------------

    def wait_for_change(self, timeout: float) -> None:
        """Wait for a NOTIFY on the LISTEN connection (reconnected as needed), at most ``timeout`` seconds;
        while the server cannot be reached, this is a plain wait and the follower polls."""
        if self._closed:
            return
        psycopg = self._psycopg
        try:
            if self._listener is None or self._listener.closed:
                self._listener = psycopg.connect(self.url, autocommit=True, **self._connect_kwargs)
                self._listener.execute(f"LISTEN {CHANNEL}")
            for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error as e:
            log.debug("%s: LISTEN connection lost (%s); polling", self.location, e)
            if self._listener is not None:
                try:
                    self._listener.close()
                except psycopg.Error:
                    pass
            self._listener = None
            self._wakeup.wait(timeout)
            self._wakeup.clear()

    def wake(self) -> None:
        super().wake()
        if self._closed:
            return
        t = threading.Thread(target=self._notify, daemon=True)  # a NOTIFY ends the follower's wait at once
        t.start()

    def _notify(self) -> None:
        try:
            with self._conn("notify") as conn:
                conn.execute(f"NOTIFY {CHANNEL}")
        except StoreError:
            pass

    def check(self) -> list[str]:
        problems = []
        with self._conn("cannot check the store") as conn:
            orphans = conn.execute(
                "SELECT count(*) FROM alexnet_images i WHERE NOT EXISTS "
                "(SELECT 1 FROM alexnet_changes c WHERE c.image_id = i.id AND c.op = 'add')"
            ).fetchone()[0]
        if orphans:
            problems.append(f"{orphans} images have no 'add' change in the log")
        return problems
