"""The index's errors: raised here, translated into HTTP answers only by the routes."""

from __future__ import annotations

__all__ = ["IndexError_", "WeightsMismatch"]


class IndexError_(RuntimeError):
    """The index cannot be opened or used; the message names the directory or file."""


class WeightsMismatch(IndexError_):
    """The index holds vectors made by other weights than the ones loaded."""
