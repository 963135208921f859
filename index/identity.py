"""Which weights a gallery belongs to: the identity its store records, claimed by the first process to open it.

fc7 vectors made by other weights are meaningless next to the stored ones, so a store records the
content hash of the weights that made its vectors (and their dimension, and the configured FAISS
factory), and every later opener must bring the same weights, or weights registered beside them
(``index.registry``: staged, or retired with their vectors kept).
"""

from __future__ import annotations

import uuid

from index import registry
from index.errors import ImageIndexError, WeightsMismatch
from index.factory import AUTO, is_exact, new_faiss
from index.store import Store

__all__ = ["claim_identity", "gallery_id"]


def gallery_id(store: Store, *, readonly: bool) -> str:
    """The id made with the gallery (a store written before there were ids gets one now; read-only, a stand-in that
    no snapshot carries). Snapshots name it, so that one from another gallery is never loaded."""
    found = store.get_meta("gallery_id")
    if found is None and not readonly:
        store.init_meta({"gallery_id": uuid.uuid4().hex})
        found = store.get_meta("gallery_id")
    return found or "unknown"


def claim_identity(store: Store, weights_hash: str, dim: int, factory: str | None, *, readonly: bool) -> tuple[str, int, str]:
    """(weights hash, dimension, configured factory) of the gallery in ``store``, claiming an empty one for
    ``weights_hash``. A factory given here replaces the stored one (the index is rebuilt with it); None keeps
    the stored one (``auto`` for a new gallery). ``WeightsMismatch`` when the store belongs to other weights."""
    if factory is not None and not is_exact(factory) and factory != AUTO:
        new_faiss(dim, factory)  # a bad factory string fails here, naming it
    stored = store.get_meta("weights_hash")
    if stored is None:
        if store.count():
            raise ImageIndexError(f"{store.location}: store has images but no weights hash; rebuild the index")
        if readonly:
            return weights_hash, dim, factory or AUTO
        # two processes opening an empty store at once agree on the first identity written
        store.init_meta({"weights_hash": weights_hash, "dim": str(dim), "factory": factory or AUTO, "gallery_id": uuid.uuid4().hex})
        stored = store.get_meta("weights_hash")
    if not readonly:
        registry.ensure_active(store, str(stored), int(store.get_meta("dim") or dim))
    configured = factory or store.get_meta("factory") or AUTO
    if not readonly and configured != store.get_meta("factory"):
        store.set_meta("factory", configured)
    if stored != weights_hash:  # the vectors of staged or retired weights, for a replica about to switch, or a comparison
        other = registry.entry(store, weights_hash)
        if other is None:
            raise WeightsMismatch(
                f"the gallery in {store.location} serves weights {str(stored)[:12]}, but the loaded weights are "
                f"{weights_hash[:12]}: their vectors would be meaningless. Point at the active weights (`alexnet model list`), or "
                f"move the gallery to these weights without losing an image: `alexnet model stage W`, then `alexnet model activate`."
            )
        return weights_hash, other.dim, configured
    return stored, int(store.get_meta("dim") or dim), configured
