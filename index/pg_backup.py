"""Backups of a PostgreSQL gallery with PostgreSQL's own tools, driven by ``alexnet index backup``/``restore``.

``backup_postgres``: one read-only transaction exports its snapshot; the manifest's counts are read in it and
``pg_dump --snapshot`` dumps exactly that moment (custom format, no owners or privileges), however many writes
the service makes meanwhile. ``restore_postgres``: ``pg_restore`` in one transaction into a database that holds
no gallery yet, then the count is checked against the manifest; an interrupted restore leaves the database as
it was. The password never appears on a command line (the tools get it as ``PGPASSWORD``) nor in a message.
The FAISS snapshot is not part of a backup: the replicas rebuild it from the restored store.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from index.backup import MANIFEST, BackupReport, new_backup_dir, write_manifest
from index.errors import ImageIndexError
from index.store import redact_url

__all__ = ["DUMP", "backup_postgres", "pg_tool", "restore_postgres"]

DUMP = "store.pgdump"


def pg_tool(name: str) -> Path:
    """A PostgreSQL program (``pg_dump``, ``initdb``...): the newest server's (Debian keeps some out of PATH), else PATH's."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1])
    on_path = shutil.which(name)
    if on_path is None:
        raise ImageIndexError(f"{name} is not installed: it comes with PostgreSQL's client programs (apt-get install postgresql-client)")
    return Path(on_path)


def _target(url: str) -> tuple[str, dict[str, str]]:
    """(connection string without the password, environment with it) for a PostgreSQL program."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except Exception as e:  # psycopg.ProgrammingError: not a URL libpq reads
        raise ImageIndexError(f"store URL {redact_url(url)!r}: {redact_url(str(e))}") from None
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = password
    return make_conninfo(**params), env


def _connect(url: str) -> Any:
    """An autocommit connection; ``ImageIndexError`` (its message without the password) when there is none."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10, client_encoding="utf8")  # (as the store: text as str)
    except psycopg.Error as e:
        raise ImageIndexError(f"cannot reach the gallery's database: {redact_url(str(e))}") from None


def _run(tool: str, args: list[str], env: dict[str, str]) -> None:
    r = subprocess.run([str(pg_tool(tool)), *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise ImageIndexError(f"{tool} failed ({r.returncode}): {redact_url(r.stderr.strip())[-2000:]}")


def backup_postgres(url: str, dest: Path) -> BackupReport:
    """Dump the gallery in the database at ``url`` to the new directory ``dest``."""
    start = time.perf_counter()
    if (dest / DUMP).exists() or (dest / MANIFEST).exists():
        raise ImageIndexError(f"{dest} already holds a backup; choose a new directory")
    conninfo, env = _target(url)
    with new_backup_dir(dest) as work, _connect(url) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if conn.execute("SELECT to_regclass('alexnet_images')").fetchone()[0] is None:  # type: ignore[index]
            raise ImageIndexError(f"{redact_url(url)}: no gallery to back up")
        snapshot = str(conn.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
        images = int(conn.execute("SELECT count(*) FROM alexnet_images").fetchone()[0])  # type: ignore[index]
        last = int(conn.execute("SELECT coalesce(max(seq), 0) FROM alexnet_changes").fetchone()[0])  # type: ignore[index]
        # the transaction stays open while pg_dump reads its snapshot
        _run("pg_dump", ["--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
                         f"--file={work / DUMP}", f"--dbname={conninfo}"], env)  # fmt: skip
        conn.execute("COMMIT")
        report = BackupReport(images, last, 0, round(time.perf_counter() - start, 3))
        write_manifest(work, report, store="postgresql")
    return report


def restore_postgres(src: Path, url: str) -> int:
    """Put the backup in ``src`` in place as the gallery of the database at ``url``, which must hold none yet;
    the images restored."""
    if not (src / DUMP).is_file():
        raise ImageIndexError(f"{src}: not a PostgreSQL backup (no {DUMP})")
    manifest = json.loads((src / MANIFEST).read_text()) if (src / MANIFEST).is_file() else {}
    conninfo, env = _target(url)
    with _connect(url) as conn:
        if conn.execute("SELECT to_regclass('alexnet_images')").fetchone()[0] is not None:  # type: ignore[index]
            raise ImageIndexError(f"{redact_url(url)} already holds a gallery: restore into a new, empty database")
    _run(
        "pg_restore",
        ["--single-transaction", "--exit-on-error", "--no-owner", "--no-privileges", f"--dbname={conninfo}", str(src / DUMP)],
        env,
    )
    with _connect(url) as conn:
        images = int(conn.execute("SELECT count(*) FROM alexnet_images").fetchone()[0])  # type: ignore[index]
    if "images" in manifest and images != manifest["images"]:
        raise ImageIndexError(f"{src}: restored {images} images, the backup's manifest says {manifest['images']}")
    return images
