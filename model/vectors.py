"""Vector helpers shared by the Predictor and the index (numpy only)."""

from __future__ import annotations

import numpy as np

__all__ = ["l2_normalise"]


def l2_normalise(v: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows ((n, d), or one (d,) vector) to unit length as a new C-contiguous float32 (n, d) array
    (what FAISS takes); an all-zero row stays all zero, never NaN."""
    out = np.ascontiguousarray(np.atleast_2d(v), dtype=np.float32).copy()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, np.maximum(norms, eps), out=out)
    return out
