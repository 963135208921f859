"""Retrieval quality: precision@k by label, and recall@k of an approximate index against exact search."""

from __future__ import annotations

import faiss
import numpy as np

from index.index import normalise

__all__ = ["precision_at_k", "recall_at_k"]


def precision_at_k(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each item's k cosine-nearest others (itself excluded) that share its label."""
    x = normalise(vectors)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, nn = index.search(x, k + 1)
    hits = 0
    for i, row in enumerate(nn):
        others = [j for j in row if j != i and j >= 0][:k]
        hits += int(np.sum(labels[others] == labels[i]))
    return hits / (len(x) * k)


def recall_at_k(exact_ids: np.ndarray, approx_ids: np.ndarray, k: int = 10) -> float:
    """Share of the exact top-k found in the approximate top-k, averaged over queries."""
    found = sum(len(set(e[:k].tolist()) & set(a[:k].tolist()) - {-1}) for e, a in zip(exact_ids, approx_ids, strict=True))
    return found / (len(exact_ids) * k)
