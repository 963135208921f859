from __future__ import annotations

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from app.schemas import ErrorResponse, ImageId, SimilarHit, SimilarQuery, SimilarResponse
from app.state import IndexDep, ModelDep
from app.uploads import multipart_body
from index.index import Hit, ImageIndex

router = APIRouter(tags=["similar"])

ERRORS: dict[int | str, dict[str, object]] = {s: {"model": ErrorResponse} for s in (400, 404, 413, 415, 422, 503)}
K = Query(10, ge=1, le=100, description="how many similar images per query")
MIN_SCORE = Query(None, ge=-1, le=1, description="leave out results below this cosine similarity")
LABEL = Query(None, max_length=200, description="only images with this label (repeat for several); filtered inside the search")
EXCLUDE_LABEL = Query(None, max_length=200, description="no images with this label (repeat for several)")
MAX_LABELS = 50


def _hits(hits: list[Hit]) -> list[SimilarHit]:
    return [SimilarHit.of(h.id, h.score, h.record) for h in hits]


async def _search(
    index: ImageIndex,
    vectors: np.ndarray,
    k: int,
    min_score: float | None,
    labels: list[str] | None,
    exclude_labels: list[str] | None,
    exclude: set[int] | None = None,
) -> list[list[Hit]]:
    if len(labels or ()) + len(exclude_labels or ()) > MAX_LABELS:
        raise HTTPException(422, f"at most {MAX_LABELS} label filters per request")
    return await run_in_threadpool(
        index.search, vectors, k, min_score=min_score, exclude=exclude, labels=labels, exclude_labels=exclude_labels
    )


@router.post("/similar", response_model=SimilarResponse, responses=ERRORS, openapi_extra=multipart_body(multiple=True))
async def similar(
    request: Request,
    model: ModelDep,
    index: IndexDep,
    k: int = K,
    min_score: float | None = MIN_SCORE,
    label: list[str] | None = LABEL,
    exclude_label: list[str] | None = EXCLUDE_LABEL,
) -> SimilarResponse:
    """For each uploaded image (``file``, or several in ``files``), the k stored images whose fc7 vectors are most
    cosine-similar to its own, and its top-5 labels. Nothing is stored."""
    done = await model.read_and_infer(request, multiple=True)
    hits = await _search(index, done.fc7.numpy(), k, min_score, label, exclude_label)
    top = model.top_k(done.probs, min(5, model.info.num_classes))
    queries = [
        SimilarQuery(filename=u.filename, count=len(h), results=_hits(h), predictions=p)
        for u, h, p in zip(done.uploads, hits, top, strict=True)
    ]
    return SimilarResponse(model=model.info, count=queries[0].count, results=queries[0].results, queries=queries)


@router.get("/similar/{image_id}", response_model=SimilarResponse, responses=ERRORS)
async def similar_to_stored(
    image_id: ImageId,
    model: ModelDep,
    index: IndexDep,
    k: int = K,
    min_score: float | None = MIN_SCORE,
    label: list[str] | None = LABEL,
    exclude_label: list[str] | None = EXCLUDE_LABEL,
) -> SimilarResponse:
    """The k stored images most similar to stored image ``image_id`` (itself left out)."""
    vector = await run_in_threadpool(index.vector, image_id)
    if vector is None:
        raise HTTPException(404, f"no image with id {image_id}")
    hits = await _search(index, vector[np.newaxis], k, min_score, label, exclude_label, exclude={image_id})
    query = SimilarQuery(filename=None, count=len(hits[0]), results=_hits(hits[0]))
    return SimilarResponse(model=model.info, count=query.count, results=query.results, queries=[query])
