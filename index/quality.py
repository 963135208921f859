"""Retrieval quality: precision@k and mAP by label, and recall@k of an approximate index against exact search.

Label metrics count an item's neighbours (itself always excluded) that share its label:
- precision@k: the share of its k cosine-nearest others with its label, averaged over items;
- mAP: for each item, the average over the other items with its label of the precision at the rank where
  each one appears in its full ranking of the others (average precision), averaged over items. An item
  whose label no other item has is left out of mAP (it has nothing to find).
"""

from __future__ import annotations

import faiss
import numpy as np
from faiss.contrib.evaluation import knn_intersection_measure

from model.vectors import l2_normalise

__all__ = ["label_metrics", "precision_at_k", "recall_at_k"]


def label_metrics(vectors: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 10, 100), chunk: int = 512) -> dict[str, float]:
    """``{"p@1": ..., "p@10": ..., "p@100": ..., "map": ...}`` for cosine similarity (ks larger than the other
    items are left out). Exact: every item against every other, ``chunk`` queries at a time."""
    x = l2_normalise(np.asarray(vectors, dtype=np.float32))
    labels = np.asarray(labels)
    n = len(x)
    ks = tuple(k for k in ks if k <= n - 1)
    hits_at = {k: 0.0 for k in ks}
    ap_sum, ap_count = 0.0, 0
    for start in range(0, n, chunk):
        sims = x[start : start + chunk] @ x.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # never itself
        order = np.argsort(-sims, axis=1, kind="stable")[:, : n - 1]
        relevant = labels[order] == labels[start : start + chunk, None]
        for k in ks:
            hits_at[k] += float(relevant[:, :k].sum())
        found = np.cumsum(relevant, axis=1)
        total = relevant.sum(axis=1)
        precision_at_hit = np.where(relevant, found / np.arange(1, n), 0.0).sum(axis=1)
        has = total > 0
        ap_sum += float((precision_at_hit[has] / total[has]).sum())
        ap_count += int(has.sum())
    out = {f"p@{k}": hits_at[k] / (n * k) for k in ks}
    out["map"] = ap_sum / ap_count if ap_count else 0.0
    return out


def precision_at_k(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each item's k cosine-nearest others (itself excluded) that share its label."""
    x = l2_normalise(vectors)
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
