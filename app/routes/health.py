from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from app.schemas import Health, Readiness
from app.state import Ctx

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(ctx: Ctx) -> Response:
    """Model and index loaded and consistent with each other (503 with the reason otherwise). "degraded" (200):
    the index serves searches but cannot follow the store (it is out of reach, or the index has fallen behind)."""
    if ctx.all_problems() or ctx.predictor is None or ctx.index is None:
        body = Readiness(status="not ready", detail=ctx.scrub("; ".join(ctx.all_problems()) or "starting"))
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    stats = await run_in_threadpool(ctx.index.stats)
    # which kind of store and whether it answers; where it is, and where the index lives, are for the log only
    stats.pop("directory", None)
    stats["store"] = "postgresql" if ctx.settings.store_url else "sqlite"
    stats["store_reachable"] = not stats.get("store_error")
    for key in ("store_error", "recovered"):
        if key in stats:
            stats[key] = ctx.scrub(str(stats[key]))
    status, detail = "ready", None
    if stats.get("store_error"):
        status, detail = "degraded", f"searching the index as of change {stats['applied_change']}; adds answer 503: {stats['store_error']}"
    elif stats["following"] and stats["seconds_since_sync"] > ctx.settings.max_follow_lag_s:
        status, detail = "degraded", f"the index has not been current with the store for {stats['seconds_since_sync']:.0f} s"
    weights = {"switches": ctx.switches, "staged": ctx.lifecycle} if ctx.lifecycle or ctx.switches else None
    body = Readiness(status=status, pid=os.getpid(), model=ctx.model_info(), index=stats, weights=weights, detail=detail)
    return JSONResponse(body.model_dump(exclude_none=True))


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(ctx: Ctx) -> Response:
    """Prometheus metrics: requests and latency per route, batch sizes, queue depth, index size."""
    if ctx.batcher:
        ctx.metrics.queue_depth.set(ctx.batcher.queue_depth)
    if ctx.index:
        ctx.metrics.observe_index(ctx.index)
    ctx.metrics.observe_weights(ctx.lifecycle)
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
