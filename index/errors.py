"""The index's errors: raised here, translated into HTTP answers only by the routes."""

from __future__ import annotations

__all__ = ["ImageIndexError", "WeightsMismatch"]


class ImageIndexError(RuntimeError):
    """The index cannot be opened or used; the message names the directory or file."""


class WeightsMismatch(ImageIndexError):
    """The index holds vectors made by other weights than the ones loaded."""
