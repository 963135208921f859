"""A backup is read as untrusted: a row whose file lies outside the gallery's images/ is refused, by restore and by
the store itself (RELIABILITY.md 34)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from index.backup import backup, restore
from index.errors import ImageIndexError
from index.index import ImageIndex
from index.store import StoreError
from tests.index.helpers import DIM, item


def _gallery(directory: Path) -> None:
    with ImageIndex(directory, weights_hash="a" * 64, dim=DIM) as idx:
        idx.add([item(i) for i in range(3)])


@pytest.mark.parametrize("bad", ["/etc/hostname", "images/../../outside.png", "store.sqlite", "images"])
def test_restore_refuses_a_row_that_names_a_file_outside_images(tmp_path: Path, bad: str) -> None:
    _gallery(tmp_path / "live")
    backup(tmp_path / "live", tmp_path / "bk")
    (tmp_path / "outside.png").write_bytes(b"secret")
    with sqlite3.connect(tmp_path / "bk" / "store.sqlite") as db:
        db.execute("UPDATE images SET file = ? WHERE id = 2", (bad,))
    with pytest.raises(ImageIndexError, match="not inside the gallery"):
        restore(tmp_path / "bk", tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_restore_copies_only_what_the_rows_name(tmp_path: Path) -> None:
    _gallery(tmp_path / "live")
    backup(tmp_path / "live", tmp_path / "bk")
    (tmp_path / "bk" / "images" / "planted.html").write_text("<script>")
    (tmp_path / "bk" / "images" / "link.png").symlink_to("/etc/hostname")
    assert restore(tmp_path / "bk", tmp_path / "restored") == 3
    assert not (tmp_path / "restored" / "images" / "planted.html").exists()
    assert not (tmp_path / "restored" / "images" / "link.png").exists()


def test_the_store_never_serves_or_deletes_a_file_outside_images(tmp_path: Path) -> None:
    _gallery(tmp_path / "g")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    with sqlite3.connect(tmp_path / "g" / "store.sqlite") as db:
        db.execute("UPDATE images SET file = ? WHERE id = 1", (str(victim),))
    with ImageIndex(tmp_path / "g", weights_hash="a" * 64, dim=DIM) as idx:
        with pytest.raises(StoreError, match="not inside"):
            idx.image_data(1)
        with pytest.raises(StoreError, match="not inside"):
            idx.delete(1)
    assert victim.read_text() == "keep me"
