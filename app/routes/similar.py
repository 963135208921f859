from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from app.overload import REFUSED_EARLY
from app.schemas import ErrorResponse, ImageId, SimilarHit, SimilarQuery, SimilarResponse
from app.state import IndexDep, ModelDep
from app.uploads import multipart_body
from index.index import Hit, ImageIndex
from index.store import MAX_LABEL_FILTERS

router = APIRouter(tags=["similar"])

ERRORS: dict[int | str, dict[str, object]] = {s: {"model": ErrorResponse} for s in (400, 404, 413, 415, 422, 503)}
K = Query(10, ge=1, le=100, description="how many similar images per query")
MIN_SCORE = Query(None, ge=-1, le=1, description="leave out results below this cosine similarity")
LABEL = Query(
    None, description=f"only images with this label (repeat for several, {MAX_LABEL_FILTERS} filters at most); filtered inside the search"
)
EXCLUDE_LABEL = Query(None, description=f"no images with this label (repeat for several, {MAX_LABEL_FILTERS} filters at most)")


class SearchQuery:
    """The query parameters both /similar routes take."""

    def __init__(
        self,
        k: int = K,
        min_score: float | None = MIN_SCORE,
        label: list[str] | None = LABEL,
        exclude_label: list[str] | None = EXCLUDE_LABEL,
    ) -> None:
        if len(label or ()) + len(exclude_label or ()) > MAX_LABEL_FILTERS:
            raise HTTPException(422, f"at most {MAX_LABEL_FILTERS} label filters per request")
        self.k, self.min_score, self.labels, self.exclude_labels = k, min_score, label, exclude_label

    async def run(self, index: ImageIndex, vectors: np.ndarray, exclude: set[int] | None = None) -> list[list[Hit]]:
        return await run_in_threadpool(
            index.search, vectors, self.k, min_score=self.min_score, exclude=exclude, labels=self.labels, exclude_labels=self.exclude_labels
        )


async def search_query(
    k: int = K, min_score: float | None = MIN_SCORE, label: list[str] | None = LABEL, exclude_label: list[str] | None = EXCLUDE_LABEL
) -> SearchQuery:
    return SearchQuery(k, min_score, label, exclude_label)  # (a class as the dependency would run in the threadpool)


Search = Annotated[SearchQuery, Depends(search_query)]


def _hits(hits: list[Hit]) -> list[SimilarHit]:
    return [SimilarHit.of(h.id, h.score, h.record) for h in hits]


@router.post("/similar", response_model=SimilarResponse, responses=ERRORS, openapi_extra={**multipart_body(multiple=True), **REFUSED_EARLY})
async def similar(request: Request, model: ModelDep, index: IndexDep, search: Search) -> SimilarResponse:
    """For each uploaded image (``file``, or several in ``files``), the k stored images whose fc7 vectors are most
    cosine-similar to its own, and its top-5 labels. Nothing is stored."""
    done = await model.read_and_infer(request, multiple=True)
    hits = await search.run(index, done.fc7.numpy())
    top = model.top_k(done.probs, min(5, model.info.num_classes))
    queries = [
        SimilarQuery(filename=u.filename, count=len(h), results=_hits(h), predictions=p, **f)
        for u, h, p, f in zip(done.uploads, hits, top, model.familiarity(done), strict=True)
    ]
    return SimilarResponse(model=model.info, count=queries[0].count, results=queries[0].results, queries=queries)


@router.get("/similar/{image_id}", response_model=SimilarResponse, responses=ERRORS)
async def similar_to_stored(image_id: ImageId, model: ModelDep, index: IndexDep, search: Search) -> SimilarResponse:
    """The k stored images most similar to stored image ``image_id`` (itself left out)."""
    vector = await run_in_threadpool(index.vector, image_id)
    if vector is None:
        raise HTTPException(404, f"no image with id {image_id}")
    hits = await search.run(index, vector[np.newaxis], exclude={image_id})
    query = SimilarQuery(filename=None, count=len(hits[0]), results=_hits(hits[0]))
    return SimilarResponse(model=model.info, count=query.count, results=query.results, queries=[query])
