"""Small vectors and images for index tests (dimension 32 keeps them fast)."""

from __future__ import annotations

import hashlib

import numpy as np

from app.testing import image_bytes
from index.store import NewImage

DIM = 32


def png(seed: int, size: int = 8) -> bytes:
    return image_bytes(seed, (size, size))


def item(seed: int, vector: np.ndarray | None = None, label: str | None = None) -> NewImage:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=DIM).astype(np.float32) if vector is None else vector.astype(np.float32)
    data = png(seed)
    return NewImage(
        vector=v,
        sha256=hashlib.sha256(data).hexdigest(),
        encoded=data,
        suffix=".png",
        width=8,
        height=8,
        source=f"test:{seed}",
        label=label or f"L{seed % 3}",
    )
