from __future__ import annotations

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from app.schemas import ErrorResponse, SimilarHit, SimilarResponse
from app.state import Ctx
from app.uploads import multipart_body, read_uploads
from index.index import Hit

router = APIRouter(tags=["similar"])

ERRORS: dict[int | str, dict[str, object]] = {s: {"model": ErrorResponse} for s in (400, 404, 413, 415, 422, 503)}
K = Query(10, ge=1, le=100, description="how many similar images")
MIN_SCORE = Query(None, ge=-1, le=1, description="leave out results below this cosine similarity")


def _hits(hits: list[Hit]) -> list[SimilarHit]:
    return [
        SimilarHit(
            id=h.id,
            score=h.score,
            label=h.record.label if h.record else None,  # (None while the store cannot be reached)
            source=h.record.source if h.record else None,
            image_url=f"/images/{h.id}",
            meta_url=f"/images/{h.id}/meta",
        )
        for h in hits
    ]


@router.post("/similar", response_model=SimilarResponse, responses=ERRORS, openapi_extra=multipart_body(multiple=False))
async def similar(request: Request, ctx: Ctx, k: int = K, min_score: float | None = MIN_SCORE) -> SimilarResponse:
    """The k stored images whose fc7 vectors are most cosine-similar to the upload's (not stored)."""
    info = ctx.model_info()
    index = ctx.require_index()
    s = ctx.settings
    async with ctx.announced():
        uploads, _ = await read_uploads(
            request, max_files=1, max_fields=s.max_fields, max_pixels=s.max_pixels, multiple=False, run=ctx.cpu_work
        )
        _, fc7 = await ctx.infer([uploads[0].decoded.image])
    hits = await run_in_threadpool(index.search, fc7.numpy(), k, min_score=min_score)
    return SimilarResponse(model=info, count=len(hits[0]), results=_hits(hits[0]))


@router.get("/similar/{image_id}", response_model=SimilarResponse, responses=ERRORS)
async def similar_to_stored(
    ctx: Ctx, image_id: int = Path(ge=1, le=2**63 - 1), k: int = K, min_score: float | None = MIN_SCORE
) -> SimilarResponse:
    """The k stored images most similar to stored image ``image_id`` (itself left out)."""
    info = ctx.model_info()
    index = ctx.require_index()
    vector = await run_in_threadpool(index.vector, image_id)
    if vector is None:
        raise HTTPException(404, f"no image with id {image_id}")
    hits = await run_in_threadpool(index.search, vector[np.newaxis], k, min_score=min_score, exclude={image_id})
    return SimilarResponse(model=info, count=len(hits[0]), results=_hits(hits[0]))
