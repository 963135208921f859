"""The gallery's weights over HTTP: list and compare them; stage, activate and retire them (behind the API key).

The same steps as ``alexnet model`` (``index/models_cli.py``), on the same registry (``index.registry``). Staging
stores the uploaded file for every replica and starts re-embedding in a process of its own; every replica follows
an activation by itself (``app.switching``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from app.routes.images import Authorized
from app.schemas import ErrorResponse, ModelsResponse, WeightsState
from app.state import Ctx, IndexDep, ServingDep
from index import registry
from index.index import ImageIndex
from index.store import Store
from model.predictor import Predictor
from model.weights import WeightsError

log = logging.getLogger("app.models")
T = TypeVar("T")

router = APIRouter(tags=["models"])

ERRORS: dict[int | str, dict[str, object]] = {s: {"model": ErrorResponse} for s in (401, 403, 409, 413, 422, 503)}

MAX_WEIGHTS_BYTES = 2 * 2**30  # an uploaded weights file: room for the full network in fp32 with margin
_comparisons: dict[tuple[str, str, int], dict[str, Any]] = {}  # (active, staged, images) -> comparison
_reembedders: list[subprocess.Popen[bytes]] = []


def _states(index: ImageIndex) -> list[WeightsState]:
    store, total = index.store, index.store.count()
    fields = WeightsState.model_fields
    return [WeightsState(**{k: v for k, v in e.public().items() if k in fields}, vectors=registry.vector_count(store, e.hash), images=total)
            for e in registry.listing(store)]  # fmt: skip


@router.get("/models", response_model=ModelsResponse, responses=ERRORS)
async def list_models(
    ctx: Ctx, index: IndexDep, serving: ServingDep, compare: bool = Query(False, description="also compare active against staged (slow)")
) -> ModelsResponse:
    """The gallery's weights: which is active, which staged or retired, and how many images have vectors of each.
    With ``compare``, active against the staged weights: agreement, accuracy, precision@10, mAP, neighbours, latency."""
    states = await run_in_threadpool(_states, index)
    comparison = None
    if compare:
        staged = [s for s in states if s.state == "staged"]
        if len(staged) != 1 or serving.predictor is None or staged[0].hash not in serving.others:
            raise HTTPException(409, f"comparing needs exactly one staged weights loaded by this process ({len(staged)} staged)")
        key = (serving.predictor.weights_hash, staged[0].hash, staged[0].images)
        if key not in _comparisons:
            from index.lifecycle import compare as run_compare

            _comparisons[key] = await run_in_threadpool(run_compare, index.store, serving.predictor, serving.others[staged[0].hash])
        comparison = _comparisons[key]
    return ModelsResponse(serving=index.weights_hash, weights=states, comparison=comparison)


def _reembed_in_background(ctx: Any, weights_hash: str) -> int:
    """``alexnet model reembed HASH`` in a process of its own, with this service's index and store (the store's URL
    passes in the environment, never on a command line)."""
    env = dict(os.environ)
    if ctx.settings.store_url:
        env["ALEXNET_STORE_URL"] = ctx.settings.store_url.get_secret_value()
    command = [sys.executable, "-m", "model.console", "model", "reembed", weights_hash, "--index", str(ctx.settings.index_dir), "--quiet"]
    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    _reembedders[:] = [p for p in _reembedders if p.poll() is None] + [proc]  # (polling reaps the finished ones)
    return proc.pid


@router.post("/models", status_code=202, responses=ERRORS, openapi_extra={
    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
})  # fmt: skip
async def stage_model(request: Request, ctx: Ctx, index: IndexDep, _: Authorized, reembed: bool = True) -> dict[str, Any]:
    """Stage a weights file (the request body: a .safetensors file as ``alexnet export`` writes it): stored for every
    replica, then re-embedded in the background; watch ``GET /models`` or ``/readyz``, then activate it."""
    directory = Path(ctx.settings.index_dir) / "weights"
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".safetensors", dir=directory)
    tmp, size = Path(name), 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_WEIGHTS_BYTES:
                    raise HTTPException(413, f"a weights file is at most {MAX_WEIGHTS_BYTES} bytes")
                f.write(chunk)
        try:
            model = await run_in_threadpool(Predictor, tmp)
        except (WeightsError, ValueError, RuntimeError) as e:
            raise HTTPException(422, f"not a usable weights file: {str(e).replace(str(tmp), 'the upload')}") from e
        path = directory / f"{model.weights_hash}.safetensors"
        os.replace(tmp, path)
        info = {"classes": len(model.class_names), "architecture": model.meta.architecture, "name": "upload"}
        try:
            entry = await run_in_threadpool(registry.register, index.store, model.weights_hash, 4096, path, info)
        except registry.RegistryError as e:
            raise HTTPException(409, str(e)) from e
    finally:
        tmp.unlink(missing_ok=True)
    answer: dict[str, Any] = entry.public()
    if reembed:
        answer["reembedding_pid"] = _reembed_in_background(ctx, model.weights_hash)
    return answer


async def _step(index: ImageIndex, weights: str, step: Callable[[Store, str], T]) -> tuple[str, T]:
    """(the full hash, what ``step`` returned) of a registry step on the weights ``weights`` names; 409 when refused."""

    def run() -> tuple[str, T]:
        target = registry.resolve(index.store, weights)
        return target.hash, step(index.store, target.hash)

    try:
        return await run_in_threadpool(run)
    except registry.RegistryError as e:
        raise HTTPException(409, str(e)) from e


@router.post("/models/{weights}/activate", responses=ERRORS)
async def activate_model(weights: str, index: IndexDep, _: Authorized) -> dict[str, str]:
    """Make these weights active: one transaction; every replica switches within its follow interval."""
    active, previous = await _step(index, weights, registry.activate)
    return {"active": active, "previous": previous}


@router.delete("/models/{weights}", responses=ERRORS)
async def retire_model(weights: str, index: IndexDep, _: Authorized) -> dict[str, Any]:
    """Drop staged or retired weights: their vectors and file."""
    retired, dropped = await _step(index, weights, registry.retire)
    return {"retired": retired, "vectors_dropped": dropped}
