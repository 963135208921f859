"""`alexnet index backup`/`restore` for a gallery in PostgreSQL: pg_dump and pg_restore driven by the CLI, against a
real server; the copy is the gallery as of one moment, its images byte for byte."""

from __future__ import annotations

import json
import subprocess
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.testing import PostgresServer
from index.cli import main as index_main
from index.errors import ImageIndexError
from index.index import ImageIndex
from index.pg_backup import DUMP, restore_postgres
from index.store import open_store
from tests.index.helpers import DIM, item

WEIGHTS = "b" * 64


def _cli(*argv: str) -> int:
    return index_main(["index", *argv])


def _gallery(url: str, directory: Path, n: int) -> None:
    with ImageIndex(directory, weights_hash=WEIGHTS, dim=DIM, store_url=url) as idx:
        idx.add([item(i, label=f"L{i % 3}") for i in range(n)])


def test_a_postgres_gallery_backs_up_and_restores_through_the_cli(
    tmp_path: Path, postgres: PostgresServer, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _gallery(pg_url, tmp_path / "live", 6)
    with closing(open_store(tmp_path, pg_url)) as s:  # one deleted: the backup holds its delete too
        s.delete(3)
    assert _cli("backup", str(tmp_path / "bk"), "--store-url", pg_url) == 0
    assert "backed up 5 images" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "bk" / "BACKUP.json").read_text())
    assert manifest["store"] == "postgresql" and manifest["images"] == 5 and manifest["last_change"] == 7
    assert (tmp_path / "bk" / DUMP).stat().st_size > 0

    target = postgres.create_database("restored_cli")
    assert _cli("restore", str(tmp_path / "bk"), "--store-url", target) == 0
    with closing(open_store(tmp_path, pg_url)) as live, closing(open_store(tmp_path, target)) as copy:
        assert copy.count() == 5 and copy.get(3) is None
        for i in (1, 2, 4, 5, 6):
            assert copy.image_data(i) == live.image_data(i)
            assert copy.get(i) == live.get(i)
        ids_live, vec_live = live.vectors([1, 2, 4, 5, 6])
        ids_copy, vec_copy = copy.vectors([1, 2, 4, 5, 6])
        assert np.array_equal(ids_live, ids_copy) and np.array_equal(vec_live, vec_copy)
    # the restored gallery serves: a new index over it finds an image as its own nearest neighbour
    with ImageIndex(tmp_path / "replica", weights_hash=WEIGHTS, dim=DIM, store_url=target) as idx:
        assert len(idx) == 5
        assert idx.search(item(4).vector, k=1)[0][0].id == 5  # item(4) is the fifth image added


def test_restore_refuses_a_database_that_holds_a_gallery_and_the_wrong_kind_of_backup(
    tmp_path: Path, postgres: PostgresServer, pg_url: str
) -> None:
    _gallery(pg_url, tmp_path / "live", 2)
    assert _cli("backup", str(tmp_path / "bk"), "--store-url", pg_url) == 0
    with pytest.raises(ImageIndexError, match="already holds a gallery"):
        restore_postgres(tmp_path / "bk", pg_url)
    with pytest.raises(ImageIndexError, match="is a PostgreSQL backup"):
        _cli("restore", str(tmp_path / "bk"), "--index", str(tmp_path / "new"))
    with ImageIndex(tmp_path / "sqlite", weights_hash=WEIGHTS, dim=DIM) as idx:
        idx.add([item(9)])
    assert _cli("backup", str(tmp_path / "sbk"), "--index", str(tmp_path / "sqlite")) == 0
    with pytest.raises(ImageIndexError, match="is a SQLite backup"):
        _cli("restore", str(tmp_path / "sbk"), "--store-url", postgres.create_database("other"))


def test_the_backup_is_one_moment_while_writers_go_on(tmp_path: Path, postgres: PostgresServer, pg_url: str) -> None:
    """Adds during the dump: the manifest's count is the dump's, whatever was added after its snapshot."""
    _gallery(pg_url, tmp_path / "live", 20)
    stop = threading.Event()

    def writer() -> None:
        with ImageIndex(tmp_path / "writer", weights_hash=WEIGHTS, dim=DIM, store_url=pg_url) as idx:
            seed = 1000
            while not stop.is_set():
                idx.add([item(seed)])
                seed += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert _cli("backup", str(tmp_path / "bk"), "--store-url", pg_url) == 0
    finally:
        stop.set()
        t.join(30)
    manifest = json.loads((tmp_path / "bk" / "BACKUP.json").read_text())
    target = postgres.create_database("moment")
    assert restore_postgres(tmp_path / "bk", target) == manifest["images"] >= 20
    with closing(open_store(tmp_path, target)) as copy:  # the images and the change log of the same moment
        assert copy.count() == manifest["images"] and copy.last_seq() == manifest["last_change"]


def test_the_password_stays_off_the_command_line_and_out_of_errors(
    tmp_path: Path, postgres: PostgresServer, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump and pg_restore get it in PGPASSWORD only (a command line is visible to every user of the machine)."""
    import index.pg_backup

    calls: list[tuple[list[str], str | None]] = []
    real_run = subprocess.run

    def recording_run(args: list[str], **kw: Any) -> Any:
        calls.append((args, kw["env"].get("PGPASSWORD")))
        return real_run(args, **kw)

    monkeypatch.setattr(index.pg_backup.subprocess, "run", recording_run)
    _gallery(pg_url, tmp_path / "live", 2)  # (the test server trusts every local login: any password is accepted)
    with_password = pg_url.replace("alexnet@", "alexnet:s3cret-pw@")
    assert _cli("backup", str(tmp_path / "bk"), "--store-url", with_password) == 0
    target = postgres.create_database("pw_restored").replace("alexnet@", "alexnet:s3cret-pw@")
    assert _cli("restore", str(tmp_path / "bk"), "--store-url", target) == 0
    assert [Path(args[0]).name for args, _ in calls] == ["pg_dump", "pg_restore"]
    for args, password in calls:
        assert password == "s3cret-pw" and not any("s3cret-pw" in a for a in args)

    missing = postgres.url("no_such_database").replace("alexnet@", "alexnet:s3cret-pw@")
    with pytest.raises(ImageIndexError) as e:
        _cli("backup", str(tmp_path / "bk2"), "--store-url", missing)
    assert "s3cret-pw" not in str(e.value)
    assert not (tmp_path / "bk2").exists() and not (tmp_path / "bk2.partial").exists()
