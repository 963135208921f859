"""The snapshot file ``index.faiss``: one process's FAISS index, stamped with the last store change it holds and
with the history it belongs to.

Layout: ``MAGIC`` (8 bytes), the body's length (little-endian uint64), the serialised index, then the header
(JSON: ``seq``, ``weights_hash``, ``dim``, ``factory``, ``gallery_id``, ``fingerprint``, ``ntotal`` and the
SHA-256 of the body) and its length (uint32). The body is streamed from FAISS to the file, so writing a snapshot
holds no copy of the index in memory. Written atomically (temp file, fsync, rename), so a crash leaves the old
file or the new one.

A snapshot belongs to one history of one gallery: ``gallery_id`` is made with the store, and ``fingerprint`` is
the store's fingerprint of the change at ``seq`` (``Store.change_fingerprint``). A database made anew, or restored
from an older dump and written past the stamp, fails one of the two.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

from index.errors import SnapshotUnusable, StoreError
from index.store import Store
from model.files import atomic_write, remove_stale_temps

log = logging.getLogger(__name__)

__all__ = ["MAGIC", "SNAPSHOT", "SnapshotFile", "SnapshotUnusable", "load_snapshot", "read_snapshot", "write_snapshot"]

SNAPSHOT = "index.faiss"
MAGIC = b"ALEXIDX2"
_LENGTH = struct.Struct("<Q")
_HEADER_LENGTH = struct.Struct("<I")


def write_snapshot(path: Path, index: faiss.Index, header: dict[str, Any]) -> None:
    """Write ``index`` with ``header`` (plus ``ntotal`` and the body's checksum) to ``path`` atomically; OSError on failure."""

    def write(f: BinaryIO) -> None:
        f.write(MAGIC + _LENGTH.pack(0))
        digest, size = hashlib.sha256(), 0

        def chunk(data: bytes) -> int:
            nonlocal size
            digest.update(data)
            size += len(data)
            return f.write(data)

        writer = faiss.PyCallbackIOWriter(chunk)  # type: ignore[attr-defined]
        faiss.write_index(index, writer)
        del writer  # flushes its buffer
        head = json.dumps({**header, "ntotal": int(index.ntotal), "sha256": digest.hexdigest()}).encode()
        f.write(head + _HEADER_LENGTH.pack(len(head)))
        f.seek(len(MAGIC))
        f.write(_LENGTH.pack(size))
        f.seek(0, 2)

    atomic_write(path, write)


def load_snapshot(
    path: Path, *, weights_hash: str, dim: int, last_seq: int, gallery_id: str, fingerprint: Callable[[int], str]
) -> tuple[faiss.Index, int, str]:
    """(index, last change it holds, its factory) of a snapshot made for this gallery: its weights and dimension,
    its ``gallery_id``, no change newer than the store's ``last_seq``, and the same change at its stamp
    (``fingerprint(seq)``, the store's)."""
    try:
        index, header = read_snapshot(path)
        if header["weights_hash"] != weights_hash or header["dim"] != dim:
            raise SnapshotUnusable("made for other weights or dimension")
        if header.get("gallery_id") != gallery_id:
            raise SnapshotUnusable("made for another gallery (the store was made anew, or replaced)")
        seq = int(header["seq"])
        if seq > last_seq:
            raise SnapshotUnusable(f"it holds change {seq}, newer than the store's last ({last_seq}): made from another history")
        if header.get("fingerprint") != fingerprint(seq):
            raise SnapshotUnusable(f"the store's change {seq} is not the one it holds: made from another history (a restored store?)")
        return index, seq, str(header["factory"])
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
    start = len(MAGIC) + _LENGTH.size
    try:
        (size,) = _LENGTH.unpack_from(data, len(MAGIC))
        (hlen,) = _HEADER_LENGTH.unpack_from(data, len(data) - _HEADER_LENGTH.size)
        if start + size + hlen + _HEADER_LENGTH.size != len(data):
            raise ValueError(f"truncated or extended: {len(data)} bytes, the lengths in it say {start + size + hlen + _HEADER_LENGTH.size}")
        header = json.loads(data[start + size : start + size + hlen])
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable header ({e})") from e
    body = memoryview(data)[start : start + size]
    if not isinstance(header, dict) or hashlib.sha256(body).hexdigest() != header.get("sha256"):
        raise ValueError("checksum mismatch (truncated or modified)")
    try:
        index = faiss.deserialize_index(np.frombuffer(body, dtype=np.uint8))
    except RuntimeError as e:
        raise ValueError(f"FAISS cannot read it ({str(e).splitlines()[-1]})") from e
    return index, header


class SnapshotFile:
    """The snapshot of one gallery's index in ``directory``, as ``ImageIndex`` uses it: loaded only when it belongs
    to this gallery, this history and these weights; set aside (``index.faiss.unusable``, kept for a look) when it
    does not; written with the stamp of the change it holds. Opening removes what killed writers left."""

    def __init__(self, directory: Path, store: Store, *, weights_hash: str, dim: int, gallery_id: str, readonly: bool) -> None:
        # the gallery's first weights have ``index.faiss``; others (index.registry) one named after their hash
        name = SNAPSHOT if weights_hash == store.column_hash() else f"index-{weights_hash[:16]}.faiss"
        self.path, self.store, self.readonly = directory / name, store, readonly
        self.weights_hash, self.dim, self.gallery_id = weights_hash, dim, gallery_id
        self.recovered: str | None = None  # why it was unusable at open, if it was
        if not readonly and (removed := remove_stale_temps(directory, name)):
            log.info("%s: removed %d temporary snapshot files a killed writer left", directory, removed)

    def read(self) -> tuple[faiss.Index, int, str] | None:
        """(index, last change it holds, factory), or None when there is none or it is unusable (``recovered`` says why)."""
        if not self.path.is_file():
            return None
        try:
            return load_snapshot(
                self.path, weights_hash=self.weights_hash, dim=self.dim, last_seq=self.store.last_seq(), gallery_id=self.gallery_id,
                fingerprint=self.store.change_fingerprint,
            )  # fmt: skip
        except SnapshotUnusable as e:
            aside = self.path.with_name(self.path.name + ".unusable")
            if not self.readonly:
                try:
                    self.path.replace(aside)
                except OSError:
                    pass
            log.warning("snapshot %s unusable (%s); set aside as %s and rebuilt from the store", self.path, e, aside.name)
            self.recovered = f"{self.path} was unusable ({e}) and was rebuilt from the store"
            return None

    def write(self, index: faiss.Index, seq: int, factory: str) -> None:
        """Write ``index``, which holds the store's changes up to ``seq``; ``StoreError`` when it cannot be written."""
        header = {"seq": seq, "factory": factory, "fingerprint": self.store.change_fingerprint(seq), "weights_hash": self.weights_hash,
                  "dim": self.dim, "gallery_id": self.gallery_id}  # fmt: skip
        try:
            write_snapshot(self.path, index, header)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot write the index snapshot ({e})") from e
