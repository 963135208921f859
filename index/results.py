"""What ``ImageIndex`` answers: search hits and the outcome of an add."""

from __future__ import annotations

from dataclasses import dataclass

from index.store import ImageRecord

__all__ = ["AddResult", "Hit"]


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    record: ImageRecord | None  # None while the store cannot be reached (the FAISS index answered alone)


@dataclass(frozen=True)
class AddResult:
    id: int
    created: bool  # False: an exact duplicate (same SHA-256) was already stored
    near_duplicate_of: int | None = None
    near_duplicate_score: float | None = None
