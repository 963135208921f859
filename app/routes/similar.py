from __future__ import annotations

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from app.schemas import ErrorResponse, ImageId, SimilarHit, SimilarResponse
from app.state import IndexDep, ModelDep
from app.uploads import multipart_body
from index.index import Hit

router = APIRouter(tags=["similar"])

ERRORS: dict[int | str, dict[str, object]] = {s: {"model": ErrorResponse} for s in (400, 404, 413, 415, 422, 503)}
K = Query(10, ge=1, le=100, description="how many similar images")
MIN_SCORE = Query(None, ge=-1, le=1, description="leave out results below this cosine similarity")


def _response(model: ModelDep, hits: list[Hit]) -> SimilarResponse:
    return SimilarResponse(model=model.info, count=len(hits), results=[SimilarHit.of(h.id, h.score, h.record) for h in hits])


@router.post("/similar", response_model=SimilarResponse, responses=ERRORS, openapi_extra=multipart_body(multiple=False))
async def similar(request: Request, model: ModelDep, index: IndexDep, k: int = K, min_score: float | None = MIN_SCORE) -> SimilarResponse:
    """The k stored images whose fc7 vectors are most cosine-similar to the upload's (not stored)."""
    done = await model.read_and_infer(request, multiple=False)
    hits = await run_in_threadpool(index.search, done.fc7.numpy(), k, min_score=min_score)
    return _response(model, hits[0])


@router.get("/similar/{image_id}", response_model=SimilarResponse, responses=ERRORS)
async def similar_to_stored(
    image_id: ImageId, model: ModelDep, index: IndexDep, k: int = K, min_score: float | None = MIN_SCORE
) -> SimilarResponse:
    """The k stored images most similar to stored image ``image_id`` (itself left out)."""
    vector = await run_in_threadpool(index.vector, image_id)
    if vector is None:
        raise HTTPException(404, f"no image with id {image_id}")
    hits = await run_in_threadpool(index.search, vector[np.newaxis], k, min_score=min_score, exclude={image_id})
    return _response(model, hits[0])
