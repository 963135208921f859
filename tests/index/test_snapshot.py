"""The snapshot file by itself: a round trip, and every kind of damage refused by name."""

from pathlib import Path

import faiss
import numpy as np
import pytest

from index.snapshot import MAGIC, read_snapshot, write_snapshot


def _index() -> faiss.Index:
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(8))
    index.add_with_ids(np.eye(8, dtype=np.float32)[:5], np.array([3, 5, 7, 9, 11], dtype=np.int64))
    return index


def test_round_trip_keeps_the_vectors_ids_and_header(tmp_path: Path) -> None:
    path = tmp_path / "index.faiss"
    write_snapshot(path, _index(), {"seq": 42, "weights_hash": "a" * 64, "dim": 8, "factory": "flat"})
    index, header = read_snapshot(path)
    assert (header["seq"], header["dim"], header["factory"], header["ntotal"]) == (42, 8, "flat", 5)
    _, ids = index.search(np.eye(8, dtype=np.float32)[2:3], 1)
    assert ids[0][0] == 7
    assert path.read_bytes()[:8] == MAGIC


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-10], "checksum"),  # truncated
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum"),  # one bit of the body
        (lambda b: b"NOTMAGIC" + b[8:], "magic"),
        (lambda b: b[:12] + b"X" + b[13:], "header"),
    ],
)
def test_damaged_snapshots_are_refused(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "index.faiss"
    write_snapshot(path, _index(), {"seq": 1, "weights_hash": "a" * 64, "dim": 8, "factory": "flat"})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message):
        read_snapshot(path)
