"""Retrieval quality: precision@k by label, and recall@k of an approximate index against exact search."""

from __future__ import annotations

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

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
    """Share of the exact top-k found in the approximate top-k, averaged over queries (FAISS's own intersection
    measure; a missing result, -1, never matches)."""
    exact, approx = np.asarray(exact_ids)[:, :k], np.asarray(approx_ids)[:, :k]
    return float(knn_intersection_measure(np.where(exact < 0, -2, exact), approx))
