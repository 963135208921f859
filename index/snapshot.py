"""The snapshot file ``index.faiss``: one process's FAISS index, stamped with the last store change it holds.

Layout: ``MAGIC`` (8 bytes), the header's length (little-endian uint32), the header (JSON: ``seq``,
``weights_hash``, ``dim``, ``factory``, ``ntotal`` and the SHA-256 of the body), then the serialised
index. Written atomically (temp file, fsync, rename), so a crash leaves the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from model.files import atomic_write

__all__ = ["MAGIC", "SNAPSHOT", "SnapshotUnusable", "load_snapshot", "read_snapshot", "write_snapshot"]

SNAPSHOT = "index.faiss"
MAGIC = b"ALEXIDX1"


def write_snapshot(path: Path, index: faiss.Index, header: dict[str, Any]) -> None:
    """Write ``index`` with ``header`` (plus ``ntotal`` and the body's checksum) to ``path`` atomically; OSError on failure."""
    body = faiss.serialize_index(index).tobytes()
    head = json.dumps({**header, "ntotal": int(index.ntotal), "sha256": hashlib.sha256(body).hexdigest()}).encode()
    atomic_write(path, MAGIC + struct.pack("<I", len(head)) + head + body)


class SnapshotUnusable(ValueError):
    """A snapshot that cannot be used: unreadable, truncated, tampered with, or made for another gallery."""


def load_snapshot(path: Path, *, weights_hash: str, dim: int, last_seq: int) -> tuple[faiss.Index, int, str]:
    """(index, last change it holds, its factory) of a snapshot made for this gallery: its weights, its dimension,
    and no change newer than the store's ``last_seq`` (else it was made from another store)."""
    try:
        index, header = read_snapshot(path)
        if header["weights_hash"] != weights_hash or header["dim"] != dim:
            raise SnapshotUnusable("made for other weights or dimension")
        if int(header["seq"]) > last_seq:
            raise SnapshotUnusable(f"it holds change {header['seq']}, newer than the store's last ({last_seq}): made from another store")
        return index, int(header["seq"]), str(header["factory"])
    except SnapshotUnusable:
        raise
    except (ValueError, KeyError, OSError) as e:
        raise SnapshotUnusable(str(e)) from e


def read_snapshot(path: Path) -> tuple[faiss.Index, dict[str, Any]]:
    """(index, header) of a snapshot file. ValueError when it is not one, or is truncated or modified;
    OSError when it cannot be read."""
    data = path.read_bytes()
    if data[:8] != MAGIC:
        raise ValueError("bad magic")
    try:
        (hlen,) = struct.unpack("<I", data[8:12])
        header = json.loads(data[12 : 12 + hlen])
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable header ({e})") from e
    body = data[12 + hlen :]
    if not isinstance(header, dict) or hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise ValueError("checksum mismatch (truncated or modified)")
    try:
        index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
    except RuntimeError as e:
        raise ValueError(f"FAISS cannot read it ({str(e).splitlines()[-1]})") from e
    return index, header
