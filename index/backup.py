"""Backups of a SQLite gallery, consistent while the service goes on adding and deleting images.

``backup``: SQLite's online backup API copies the database as of one moment (one read transaction;
writers in WAL mode carry on meanwhile), then the image files its rows name are copied beside it.
An image deleted between that moment and its copy is left out of the backup (its row removed, with a
delete change), so a backup never names a file it lacks. The FAISS snapshot is not copied: the first
open of a restored gallery rebuilds it from the store.

``restore``: into an index directory that holds no gallery yet, built aside and renamed into place, so
an interrupted restore leaves nothing half-written where the service would open it. It copies the
database and the image files its rows name, and refuses a row whose file is not a plain file inside
``images/`` (an absolute path, ``..``, a link): a backup is read as untrusted.

A gallery in PostgreSQL (``ALEXNET_STORE_URL``) is backed up with PostgreSQL's own tools (README).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from index.errors import ImageIndexError
from index.sqlite_store import image_file

__all__ = ["BackupReport", "backup", "restore"]

DB = "store.sqlite"
MANIFEST = "BACKUP.json"


@dataclass
class BackupReport:
    images: int
    last_change: int
    left_out: int  # images deleted while the backup ran
    seconds: float


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        db.execute("PRAGMA busy_timeout = 10000")
        yield db
    finally:
        db.close()


@contextmanager
def new_backup_dir(dest: Path) -> Iterator[Path]:
    """A directory beside ``dest`` to write a backup into: renamed to ``dest`` when the block ends, removed when
    it fails, so that ``dest`` only ever holds a whole backup. ``dest`` may exist if it is empty."""
    work = dest.with_name(dest.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
        if dest.exists():
            dest.rmdir()  # (an empty directory the user made for it; a non-empty one fails here, naming it)
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_manifest(work: Path, report: BackupReport, **about: str) -> None:
    (work / MANIFEST).write_text(json.dumps({**about, "time": time.time(), **asdict(report)}, indent=2) + "\n")


def backup(index_dir: Path, dest: Path) -> BackupReport:
    """Copy the gallery in ``index_dir`` to the new directory ``dest`` (which must not hold a gallery)."""
    start = time.perf_counter()
    source = index_dir / DB
    if not source.is_file():
        raise ImageIndexError(f"{source}: no gallery to back up")
    if (dest / DB).exists():
        raise ImageIndexError(f"{dest} already holds a backup; choose a new directory")
    with new_backup_dir(dest) as work:
        with _connect(source) as src, _connect(work / DB) as out:
            src.backup(out)  # one consistent moment, however many writes follow
        left_out = 0
        with _connect(work / DB) as db:
            for image_id, file in db.execute("SELECT id, file FROM images ORDER BY id").fetchall():
                target = work / file
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copy2(index_dir / file, target)
                except FileNotFoundError:  # deleted after the moment of the backup
                    db.execute("DELETE FROM images WHERE id = ?", (image_id,))
                    db.execute("INSERT INTO changes (op, image_id) VALUES ('delete', ?)", (image_id,))
                    left_out += 1
            images = int(db.execute("SELECT count(*) FROM images").fetchone()[0])
            last = int(db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])
            if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise ImageIndexError(f"{source}: the copy failed SQLite's integrity check")
            db.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        report = BackupReport(images, last, left_out, round(time.perf_counter() - start, 3))
        write_manifest(work, report, source=str(index_dir))
    return report


def restore(src: Path, index_dir: Path) -> int:
    """Put the backup in ``src`` in place as the gallery of ``index_dir`` (absent or empty); the images restored."""
    if not (src / DB).is_file():
        raise ImageIndexError(f"{src}: not a backup (no {DB})")
    if index_dir.exists() and any(index_dir.iterdir()):
        raise ImageIndexError(f"{index_dir} is not empty: restore into a new directory (move the old gallery aside first)")
    with _connect(src / DB) as db:
        if db.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise ImageIndexError(f"{src / DB}: the backup fails SQLite's integrity check")
        files = [str(r[0]) for r in db.execute("SELECT file FROM images").fetchall()]
    paths = [image_file(src, f, ImageIndexError) for f in files]  # never a path outside the gallery's images/
    missing = [f for f, p in zip(files, paths, strict=True) if not p.is_file()]
    if missing:
        raise ImageIndexError(f"{src}: the backup lacks {len(missing)} image files (first: {missing[0]})")
    work = index_dir.with_name(index_dir.name + ".restoring")
    shutil.rmtree(work, ignore_errors=True)
    try:  # the database and the files its rows name, nothing else the backup directory may hold
        work.mkdir(parents=True)
        shutil.copy2(src / DB, work / DB)
        for f, p in zip(files, paths, strict=True):
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, work / f)
        if index_dir.exists():
            index_dir.rmdir()
        work.rename(index_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return len(files)
