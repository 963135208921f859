"""How a running service follows its gallery's weights (``index.registry``): it serves the active weights, embeds
every add with the staged and retired ones too, and switches when another weights become active.

``WeightsFollower`` looks at the registry every ``follow_interval_s`` (a few small reads):
- weights registered beside the active ones (staged, or retired with their vectors kept) are loaded, their files
  fetched from the store into ``INDEX_DIR/weights/``; ``POST /images`` then stores each new image's vectors of all of
  them in the same transaction, from the stored copy, as re-embedding computes them (``index.lifecycle``);
- when the active weights change, it loads the new model and opens their FAISS index (from the stored vectors, or
  its snapshot), then swaps both in at one instant on the event loop. A request resolves the model and the index
  once, together (``app.state.get_serving``), so it finishes on what it started with, and no answer mixes two
  weights: each names the hash whose vectors its neighbours came from. The old index is closed a while later.
- the staged weights' progress (images with a vector of them) goes to ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from index import registry
from index.index import ImageIndex
from index.store import Store, StoreError
from model.predictor import Predictor

log = logging.getLogger("app.switching")

__all__ = ["WeightsFollower", "served_weights"]

PROGRESS_EVERY_S = 2.0  # how often the staged weights' vectors are counted
OLD_INDEX_GRACE_S = 60.0  # requests that resolved the old index finish long before it is closed


@dataclass
class Plan:
    """What a look at the registry found: the new active model and index to swap in (if any), the others to keep."""

    others: dict[str, Predictor]
    progress: dict[str, dict[str, Any]]
    switch: tuple[Predictor, ImageIndex] | None = None


def served_weights(store: Store, loaded: Predictor, load: Callable[[str], Predictor]) -> Predictor:
    """The model a starting replica serves: the gallery's active weights (fetched from the store when they are not
    the configured file's), or the configured file's for a gallery that has none yet."""
    active = store.get_meta("weights_hash")
    if active is None or active == loaded.weights_hash:
        return loaded
    try:
        return load(active)
    except registry.RegistryError as e:  # a gallery whose active weights' file is not stored: the configured one is refused later
        log.warning("the gallery's active weights %s cannot be loaded from the store: %s", active[:12], e)
        return loaded


_closing: set[asyncio.Future[None]] = set()


def _close_soon(index: ImageIndex) -> None:
    task = asyncio.ensure_future(anyio.to_thread.run_sync(index.close))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class WeightsFollower:
    def __init__(self, state: Any, open_index: Callable[[str], ImageIndex], load: Callable[[str], Predictor]) -> None:
        self.state, self.open_index, self.load = state, open_index, load
        self.error: str | None = None
        self._counted = 0.0  # when the staged weights' vectors were last counted

    def look(self) -> Plan:
        """(A worker thread.) Read the registry; load what is missing."""
        state = self.state
        store = state.index.store
        entries = registry.listing(store)
        current: Predictor = state.predictor
        known: dict[str, Predictor] = {**state.others, current.weights_hash: current}
        others: dict[str, Predictor] = {}
        progress: dict[str, dict[str, Any]] = {}
        fresh = time.monotonic() - self._counted > PROGRESS_EVERY_S  # (counting scans the gallery: not at every look)
        total = 0
        for e in entries:
            if e.state == "active" or e.file_sha256 is None:
                continue
            others[e.hash] = known.get(e.hash) or self.load(e.hash)
            if e.state == "staged":
                last = state.lifecycle.get(e.hash)
                if fresh or last is None:
                    total = total or store.count()
                    last = {"state": e.state, "vectors": registry.vector_count(store, e.hash), "images": total}
                progress[e.hash] = last
        if fresh:
            self._counted = time.monotonic()
        active = next((e.hash for e in entries if e.state == "active"), current.weights_hash)
        if len(entries) > 1 and active == current.weights_hash:  # other weights beside: keep the active file for a roll back
            registry.ensure_file(store, active, current.path)
        plan = Plan(others, progress)
        if active != current.weights_hash:
            started = time.perf_counter()
            model = known.get(active) or self.load(active)
            plan.switch = (model, self.open_index(active))
            plan.others.pop(active, None)
            log.info("weights %s are active now: loaded with their index in %.1f s", active[:12], time.perf_counter() - started)
        return plan

    def apply(self, plan: Plan) -> None:
        """(The event loop.) Swap in what ``look`` prepared, at one instant."""
        state = self.state
        if plan.switch is not None:
            model, index = plan.switch
            old_model, old_index = state.predictor, state.index
            state.predictor, state.index = model, index  # (both together: no await between)
            state.metrics.index_size.set(len(index))
            state.switches += 1
            state.metrics.switches.inc()
            log.info("now serving weights %s (was %s)", model.weights_hash[:12], old_model.weights_hash[:12])
            asyncio.get_running_loop().call_later(OLD_INDEX_GRACE_S, _close_soon, old_index)
        state.others = plan.others
        state.lifecycle = plan.progress

    async def run(self, every_s: float) -> None:
        while True:
            try:
                plan = await anyio.to_thread.run_sync(self.look)
                self.apply(plan)
                self.error = None
            except (StoreError, registry.RegistryError, OSError, ValueError, RuntimeError) as e:
                if self.error != str(e):
                    log.warning("cannot follow the gallery's weights: %s", e)
                self.error = str(e)
            await asyncio.sleep(every_s)
