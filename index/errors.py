"""Every error the index package raises, in one place. They say what was expected and what was found; the service
turns them into HTTP answers in one table (``app/errors.py``), and the CLIs print them."""

from __future__ import annotations

__all__ = [
    "Cancelled",
    "ImageIndexError",
    "InvalidText",
    "SnapshotUnusable",
    "StoreError",
    "StoreUnavailable",
    "WeightsChanged",
    "WeightsMismatch",
]


class ImageIndexError(RuntimeError):
    """The index cannot be opened or used; the message names the directory or file."""


class WeightsMismatch(ImageIndexError):
    """The index holds vectors made by other weights than the ones loaded."""


class StoreError(RuntimeError):
    """The store cannot be used or written (read-only, disk full, corrupt); the message says which."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (database down, locked past the timeout): try again later."""


class WeightsChanged(StoreUnavailable):
    """A write made with weights that are no longer the gallery's active ones (another process activated new ones
    meanwhile): the writer follows the switch, and the request is worth a retry."""


class InvalidText(ValueError):
    """Text a store cannot hold, refused before any database sees it."""


class SnapshotUnusable(ValueError):
    """A snapshot that cannot be used: unreadable, truncated, tampered with, or made for another gallery or history."""


class Cancelled(Exception):
    """A build stopped because its index is closing."""
