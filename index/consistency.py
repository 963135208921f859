"""Whether a FAISS index holds what its store says, by content: counts can agree while the vectors do not (an
index built from other weights' vectors, or from another history of the gallery)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from index.store import Store

__all__ = ["sampled_problems"]

Search = Callable[[np.ndarray, int], list[list[tuple[int, float]]]]


def sampled_problems(store: Store, search: Search, sample: int = 64, weights: str | None = None) -> list[str]:
    """Up to ``sample`` stored images, spread over the gallery's ids, each searched (``search(vectors, k)``) with its
    stored unit vector: an exact index finds each as itself (or a tie), a compressed one at least among its 10 best
    with a cosine above 0.99. A problem line when some are not found (empty when all are)."""
    ids = store.all_ids()
    if not len(ids):
        return []
    picked = ids[np.linspace(0, len(ids) - 1, min(sample, len(ids))).astype(int)]
    found, vectors = store.vectors([int(i) for i in picked], weights)
    nonzero = np.linalg.norm(vectors, axis=1) > 0.5 if len(found) else np.zeros(0, dtype=bool)
    found, vectors = found[nonzero], vectors[nonzero]  # (an all-zero vector, an all-black image's fc7, is near nothing)
    if not len(found):
        return []
    hits = search(vectors, 10)
    missing = [int(i) for i, row in zip(found, hits, strict=True) if not any(h == i and s > 0.99 for h, s in row)]
    if not missing:
        return []
    return [f"{len(missing)} of {len(found)} sampled images are not found by their own stored vectors (ids {missing[:5]})"]
