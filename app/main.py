"""The FastAPI application: ``create_app()`` builds it; its lifespan loads model and index once."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
import faiss
import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.batching import Batcher
from app.errors import register as register_errors
from app.limits import BodySizeLimit
from app.metrics import Metrics
from app.observe import RequestTelemetry, configure_logging
from app.overload import Admission, EarlyRefusal
from app.public import Scrubber
from app.routes import classify, health, images, models, similar, web
from app.settings import Settings, get_settings
from app.state import ServiceState
from app.switching import WeightsFollower, served_weights
from index import registry
from index.errors import WeightsMismatch
from index.index import ImageIndex, ImageIndexError
from index.store import Store, StoreError, StoreUnavailable, open_store
from model.decode_cost import DecodeBudget
from model.predictor import Predictor
from model.runtime import retain_freed_memory
from model.weights import WeightsError

log = logging.getLogger("app")

__all__ = ["app", "create_app"]


def _size_threads(settings: Settings) -> None:
    """One forward pass at a time uses every core; FAISS searches stay single-threaded so that
    concurrent searches do not oversubscribe the cores (RELIABILITY.md 26)."""
    torch.set_num_threads(settings.threads())
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    if settings.faiss_threads:
        faiss.omp_set_num_threads(settings.faiss_threads)


def settle_garbage_collector() -> None:
    """Move everything alive once the service has loaded (modules, model, index, app) out of the collector's sight.

    A full collection walks every tracked object; with PyTorch, FAISS and FastAPI loaded it paused the whole
    process a few times a minute under load, and those pauses were the p99 of every route (bench/RESULTS.md,
    "Design figures"). Frozen objects are never walked, so what is left to collect is what requests made."""
    gc.collect()
    gc.freeze()


def load_state(settings: Settings, metrics: Metrics, scrub: Scrubber | None = None) -> ServiceState:
    state = ServiceState(
        settings=settings, metrics=metrics, decode_budget=DecodeBudget(settings.decode_budget_mb * 2**20), scrub=scrub or Scrubber(settings)
    )
    try:
        state.predictor = _predictor(settings, settings.weights)
    except (WeightsError, OSError, RuntimeError, ValueError) as e:
        state.problems.append(f"weights {settings.weights}: {e}")
        log.error("cannot load weights: %s", e)
        return state
    state.index_retryable = open_index(state)
    return state


def _predictor(settings: Settings, path: Path) -> Predictor:
    return Predictor(path, device=settings.device, max_batch=max(settings.max_batch, 10), precision=settings.precision)


def load_registered(settings: Settings, store: Store, weights_hash: str) -> Predictor:
    """A model of the gallery's registered weights, its file fetched from the store (``index.registry``)."""
    return _predictor(settings, registry.download(store, weights_hash, Path(settings.index_dir) / "weights"))


def new_index(settings: Settings, weights_hash: str) -> ImageIndex:
    """The gallery's index of one weights' vectors, following the store."""
    return ImageIndex(
        settings.index_dir,
        weights_hash=weights_hash,
        factory=settings.index_factory,
        auto_threshold=settings.index_auto_threshold,
        rerank=settings.index_rerank,
        nprobe=settings.index_nprobe,
        snapshot_every=settings.snapshot_every,
        store_url=settings.store_url.get_secret_value() if settings.store_url else None,
        follow_interval=settings.follow_interval_s,
        store_timeouts=settings.store_timeouts(),
    )


def open_index(state: ServiceState) -> bool:
    """Open the gallery's index, serving its active weights (which may not be the configured file's: the gallery
    moved on, ``app.switching``); on failure record why (``state.index_problem``). True when it may work later (the
    store could not be reached), so that the lifespan tries again."""
    settings = state.settings
    assert state.predictor is not None
    try:
        index = new_index(settings, state.predictor.weights_hash)
        active = index.store.get_meta("weights_hash")
        if active != index.weights_hash:  # opened as registered weights beside the active ones: serve the active
            state.predictor = served_weights(index.store, state.predictor, lambda h: load_registered(settings, index.store, h))
            if state.predictor.weights_hash != index.weights_hash:
                index.close()
                index = new_index(settings, state.predictor.weights_hash)
    except WeightsMismatch as e:  # weights the gallery does not know: its active ones, from the store, if it holds them
        store = None
        try:
            store = open_store(settings.index_dir, settings.store_url.get_secret_value() if settings.store_url else None,
                               timeouts=settings.store_timeouts())  # fmt: skip
            model = served_weights(store, state.predictor, lambda h: load_registered(settings, store, h))  # type: ignore[arg-type]
        except (StoreError, WeightsError, OSError) as e2:
            log.warning("%s", e2)
            model = state.predictor
        finally:
            if store is not None:
                store.close()
        if model is state.predictor:
            state.index_problem = f"index {settings.index_dir}: {e}"
            log.error("cannot open the index: %s", e)
            return False
        state.predictor = model
        return open_index(state)
    except (ImageIndexError, StoreError, OSError, ValueError) as e:
        if state.index_problem is None:
            log.error("cannot open the index: %s", e)
        state.index_problem = f"index {settings.index_dir}: {e}"
        return isinstance(e, StoreUnavailable)
    state.index, state.index_problem = index, None
    state.metrics.index_size.set(len(index))
    return False


async def retry_open_index(state: ServiceState, every_s: float = 2.0) -> None:
    """While the store cannot be reached at start, try again until it can (the service starts not ready)."""
    while state.index is None:
        await anyio.sleep(every_s)
        if not await anyio.to_thread.run_sync(open_index, state):
            if state.index is not None:
                log.info("index open: %s", state.settings.index_dir)
            return


async def _follow_weights(state: ServiceState, follower: WeightsFollower) -> None:
    """Once the index is open, follow the gallery's weights (app.switching) as long as the service runs."""
    while state.index is None or state.predictor is None:
        if state.problems:
            return
        await asyncio.sleep(1.0)
    await follower.run(max(0.2, state.settings.follow_interval_s or 1.0))


def _admission(app: object) -> Admission | None:
    """The running service's overload accounting (None while it loads): for ``EarlyRefusal``."""
    service = getattr(getattr(app, "state", None), "service", None)
    batcher = getattr(service, "batcher", None)
    return batcher.admission if batcher is not None else None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level.upper())
    if settings.retain_freed_memory:  # (model/runtime.py)
        retain_freed_memory()
    metrics = Metrics()
    scrub = Scrubber(settings)  # every answer's text goes through it (app.public)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _size_threads(settings)
        # decoding uploads and index calls run in this pool; bounded so that a burst cannot start hundreds of decoders
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.decode_threads
        state = load_state(settings, metrics, scrub)
        retry = None
        if state.index is None and state.index_retryable:
            retry = asyncio.get_running_loop().create_task(retry_open_index(state))
        if state.predictor is not None:
            state.batcher = Batcher(
                state.predictor.forward_scored,
                max_batch=settings.max_batch,
                max_wait_s=settings.batch_wait_ms / 1000,
                max_wait_busy_s=settings.batch_wait_busy_ms / 1000,
                exclusive=settings.exclusive_forward and settings.device == "cpu",
                on_batch=metrics.observe_batch,
                max_queue=settings.max_queue_images,
            )
            state.batcher.start()
        app.state.service = state

        def load(weights_hash: str) -> Predictor:
            assert state.index is not None
            return load_registered(settings, state.index.store, weights_hash)

        follower = WeightsFollower(state, lambda h: new_index(settings, h), load)
        follow = asyncio.get_running_loop().create_task(_follow_weights(state, follower))
        settle_garbage_collector()
        if state.all_problems():
            log.error("not ready: %s", "; ".join(state.all_problems()))
        else:
            log.info(
                "ready: %s (%s), index %s with %d images",
                settings.weights,
                state.predictor.weights_hash[:12] if state.predictor else "-",
                settings.index_dir,
                len(state.index) if state.index else 0,
            )
        try:
            yield
        finally:
            if retry is not None:
                retry.cancel()
            follow.cancel()
            if state.batcher:
                await state.batcher.stop()
            if state.index:
                state.index.close()

    app = FastAPI(
        title="AlexNet classification and similarity service",
        version="0.1.0",
        description="The 2012 AlexNet: top-k classification and fc7 cosine similarity search over stored images.",
        lifespan=lifespan,
    )
    app.state.settings = settings

    register_errors(app, metrics, scrub)  # every exception's answer: app/errors.py
    for module in (classify, similar, images, models, health, web):
        app.include_router(module.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes, larger={("POST", "/models"): models.MAX_WEIGHTS_BYTES})
    # inside CORS, so a refusal carries its headers
    app.add_middleware(EarlyRefusal, on_refusal=metrics.overloaded.inc, admission=_admission)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list(),
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestTelemetry, metrics=metrics)  # outermost: every request has its id and its access-log line
    return app


def app() -> FastAPI:
    """Factory for ``uvicorn --factory app.main:app``."""
    return create_app()
