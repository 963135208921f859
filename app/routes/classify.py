from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request

from app.overload import REFUSED_EARLY
from app.schemas import ClassifyResponse, ClassifyResult, ErrorResponse
from app.state import ModelDep
from app.uploads import multipart_body

router = APIRouter(tags=["classify"])

ERRORS: dict[int | str, dict[str, object]] = {s: {"model": ErrorResponse} for s in (400, 413, 415, 422, 503)}


@router.post(
    "/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra={**multipart_body(multiple=True), **REFUSED_EARLY}
)
async def classify(
    request: Request,
    model: ModelDep,
    k: int | None = Query(
        None, ge=1, le=1000, description="labels per image: 1 to the number of classes (default 5, or fewer if the model has fewer classes)"
    ),
    ten_crop: bool = Query(False, description="average the softmax over the paper's 10 patches"),
) -> ClassifyResponse:
    """Top-k labels with probabilities for each uploaded image."""
    info = model.info
    if k is None:
        k = min(5, info.num_classes)
    if k > info.num_classes:
        raise HTTPException(422, f"k must be between 1 and {info.num_classes} (the model's classes), got {k}")
    done = await model.read_and_infer(request, multiple=True, ten_crop=ten_crop)
    rows = model.top_k(done.probs, k)
    return ClassifyResponse(
        model=info,
        ten_crop=ten_crop,
        results=[
            ClassifyResult(filename=u.filename, predictions=r, **f)
            for u, r, f in zip(done.uploads, rows, model.familiarity(done), strict=True)
        ],
    )
