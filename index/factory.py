"""FAISS indexes from factory strings: which one ``auto`` picks, how it is built, trained, tuned and re-scored.

- Exact search (``IndexFlatIP``) over unit vectors is cosine similarity.
- Compressed indexes search by L2 distance, which on unit vectors ranks exactly as cosine does
  (|x - q|^2 = 2 - 2 cos) and, unlike the inner product, is not changed by the centring that PCA
  applies (inner products in PCA space rank by <x - m, q - m>, which on fc7 vectors, all near their
  mean m, is far from cosine order). Scores are 1 - d / 2.
- Their best candidates are re-scored exactly with the stored fp32 vectors (``rescore``): the
  neighbours of an fc7 vector differ by about 1e-5 in cosine, below what PCA or 8-bit codes preserve.
- A leading PCA is trained with numpy's float32 eigh, which is much faster than FAISS's own
  routine at 4096 dimensions (figures in bench/RESULTS.md).
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from index.errors import ImageIndexError

__all__ = [
    "AUTO",
    "DEFAULT_AUTO_THRESHOLD",
    "DEFAULT_DIM",
    "DEFAULT_NPROBE",
    "DEFAULT_RERANK",
    "DEFAULT_SNAPSHOT_EVERY",
    "auto_factory",
    "base_index",
    "default_nprobe",
    "is_exact",
    "new_faiss",
    "rescore",
    "search_candidates",
    "selector_for",
    "train_index",
    "tune",
]

# the tuning defaults, here only (ImageIndex's arguments, the service's settings and the commands' help use these)
DEFAULT_AUTO_THRESHOLD = 20_000  # collection size at which ``auto`` switches to PCA256,IVF
DEFAULT_RERANK = 100  # candidates of a compressed index re-scored exactly with the stored vectors (0: off)
DEFAULT_NPROBE = 0  # inverted lists an IVF index searches (0: ``default_nprobe``)
DEFAULT_SNAPSHOT_EVERY = 2000  # adds/deletes between snapshots

DEFAULT_DIM = 4096
AUTO = "auto"


def auto_factory(n: int, threshold: int, dim: int = DEFAULT_DIM) -> str:
    """What ``auto`` uses for n vectors: exact below ``threshold``; then PCA to 256 dimensions (a
    quarter of smaller ones, or of n) and an inverted file of about 4 sqrt(n) lists (a power of two, at most
    65536 and at most n / 39, so that k-means has 39 points per centroid) over fp32 codes."""
    if n < threshold:
        return "flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    nlist = max(1, min(65536, nlist, 2 ** int(math.log2(max(1, n // 39)))))
    return f"PCA{max(1, min(256, dim // 4, n // 4))},IVF{nlist},Flat"  # (PCA must have more samples than outputs)


def is_exact(factory: str) -> bool:
    return factory.lower() in ("", "flat", "exact")


def base_index(dim: int, factory: str) -> faiss.Index:
    """The FAISS index for a factory: exact inner product, or L2 for the others (see the module docstring)."""
    if is_exact(factory):
        return faiss.IndexFlatIP(dim)
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_L2)
    except RuntimeError as e:
        raise ImageIndexError(f"invalid FAISS factory string {factory!r}: {str(e).splitlines()[-1]}") from e


def new_faiss(dim: int, factory: str) -> faiss.Index:
    return faiss.IndexIDMap2(base_index(dim, factory))


def default_nprobe(nlist: int) -> int:
    """Inverted lists searched by default: nlist / 64, at least 16 (recall@10 0.996 at 10^5 and 10^6, bench/RESULTS.md)."""
    return min(nlist, max(16, nlist // 64))


def rescore(query: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``ids`` with their unit ``vectors`` (rows), best first by exact cosine to ``query``: (ids, scores)."""
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")
    return ids[order], scores[order]


def first_pca(index: faiss.Index) -> Any:
    """The PCAMatrix an index applies first (inside the id map), or None."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform) and inner.chain.size():  # type: ignore[attr-defined]
        vt = faiss.downcast_VectorTransform(inner.chain.at(0))  # type: ignore[attr-defined]
        if isinstance(vt, faiss.PCAMatrix):
            return vt
    return None


def train_pca(pca: Any, sample: np.ndarray) -> None:
    """Train a plain FAISS PCAMatrix with numpy's float32 eigh (several times faster than FAISS's own routine
    at 4096 dimensions: bench/RESULTS.md, "Design figures"), keeping only the d_out eigenvectors it uses."""
    mean = sample.mean(0, dtype=np.float64).astype(np.float32)
    centred = sample - mean
    if len(sample) < sample.shape[1]:  # fewer samples than dimensions: the SVD of the samples is cheaper
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        eigenvalues, top = singular**2 / max(1, len(sample) - 1), vt[: pca.d_out]
    else:
        cov = (centred.T @ centred) / max(1, len(sample) - 1)
        eigenvalues, vectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues, top = eigenvalues[order], vectors[:, order[: pca.d_out]].T  # rows: eigenvectors
    faiss.copy_array_to_vector(mean, pca.mean)
    faiss.copy_array_to_vector(np.ascontiguousarray(eigenvalues, dtype=np.float32), pca.eigenvalues)
    top = np.ascontiguousarray(top, dtype=np.float32)
    faiss.copy_array_to_vector(top.ravel(), pca.PCAMat)
    pca.is_trained = True
    pca.prepare_Ab()


def train_index(index: faiss.Index, sample: np.ndarray) -> None:
    """Train an index built from a factory string on a sample (a leading PCA with numpy's eigh)."""
    pca = first_pca(index)
    if pca is not None and not pca.is_trained and pca.eigen_power == 0 and not pca.random_rotation and pca.balanced_bins == 0:
        if len(sample) <= pca.d_out:
            raise ImageIndexError(
                f"PCA to {pca.d_out} dimensions needs more than {pca.d_out} stored vectors to train on, there are {len(sample)}"
            )
        train_pca(pca, sample)
    index.train(sample)  # a trained transform is skipped; the rest is trained on its output


def search_candidates(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    exact: bool,
    rerank: int,
    tombstones: set[int],
    selector: faiss.IDSelector | None = None,
) -> list[list[tuple[int, float]]]:
    """(id, cosine) candidates for each unit query, best first: ``k`` from an exact index, else ``max(k, rerank)``
    for ``rescore`` to order (tombstoned ids left out; the caller keeps the index from changing meanwhile).
    ``selector``: only those ids, filtered inside the search, so k come back whenever k match. An IVF index that
    finds fewer in the lists it probes searches them all."""
    n = int(index.ntotal)
    if n == 0 or k <= 0:
        return [[] for _ in range(len(queries))]
    kk = min(n, max(k, 0 if exact else rerank) + len(tombstones))
    scores, ids = index.search(queries, kk, params=_search_params(index, selector, exhaustive=False))
    if selector is not None and (ids < 0).any() and _ivf(index) is not None:
        scores, ids = index.search(queries, kk, params=_search_params(index, selector, exhaustive=True))
    if index.metric_type == faiss.METRIC_L2:
        scores = 1.0 - scores / 2.0  # squared L2 between unit vectors -> cosine
    return [
        [(int(i), float(s)) for s, i in zip(row_s, row_i, strict=True) if i >= 0 and int(i) not in tombstones and np.isfinite(s)]
        for row_s, row_i in zip(scores, ids, strict=True)
    ]


def _ivf(index: faiss.Index) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _search_params(index: faiss.Index, selector: faiss.IDSelector | None, *, exhaustive: bool) -> Any:
    if selector is None:
        return None
    ivf = _ivf(index)
    if ivf is None:  # (faiss takes the fields as keywords)
        return faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
    return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nlist if exhaustive else ivf.nprobe)  # type: ignore[call-arg]


def selector_for(allowed: np.ndarray | None, excluded: np.ndarray | None) -> tuple[faiss.IDSelector, list[Any]]:
    """A selector of the ids in ``allowed`` (None: any) and not in ``excluded`` (None: none), one of them given,
    and the objects it points to (FAISS keeps raw pointers: the caller holds the list while the selector is used)."""
    keep: list[Any] = []
    parts: list[faiss.IDSelector] = []
    if allowed is not None:
        parts.append(faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64)))
    if excluded is not None:
        inner = faiss.IDSelectorBatch(np.ascontiguousarray(excluded, dtype=np.int64))
        keep.append(inner)
        parts.append(faiss.IDSelectorNot(inner))
    if not parts:
        raise ValueError("selector_for needs allowed or excluded ids")
    keep += parts
    if len(parts) == 1:
        return parts[0], keep
    both = faiss.IDSelectorAnd(parts[0], parts[1])
    return both, keep


def tune(index: faiss.Index, nprobe: int = 0) -> None:
    """Search-time parameters: the inverted lists an IVF index searches (0: ``default_nprobe``)."""
    ivf = _ivf(index)
    if ivf is None:
        return
    ivf.nprobe = min(ivf.nlist, nprobe) if nprobe else default_nprobe(ivf.nlist)
