from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.schemas import Health, Readiness
from app.state import Ctx

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(ctx: Ctx) -> Response:
    """Model and index loaded and consistent with each other (503 with the reason otherwise)."""
    if ctx.problems or ctx.predictor is None or ctx.index is None:
        body = Readiness(status="not ready", detail="; ".join(ctx.problems) or "starting")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    stats = ctx.index.stats()
    return JSONResponse(Readiness(status="ready", model=ctx.model_info(), index=stats).model_dump(exclude_none=True))


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(ctx: Ctx) -> Response:
    """Prometheus metrics: requests and latency per route, batch sizes, queue depth, index size."""
    if ctx.batcher:
        ctx.metrics.queue_depth.set(ctx.batcher.queue_depth)
    if ctx.index:
        ctx.metrics.index_size.set(len(ctx.index))
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
