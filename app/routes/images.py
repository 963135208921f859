from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.schemas import AddedImage, AddImagesResponse, DeleteResponse, ErrorResponse, ImageId, ImageList, ImageMeta, LabelUpdate
from app.state import Ctx, IndexDep, ModelDep
from app.uploads import multipart_body
from index.store import MAX_ID, MAX_LABEL_CHARS, MAX_LABEL_FILTERS, NewImage, check_text

router = APIRouter(tags=["images"])

ERRORS: dict[int | str, dict[str, object]] = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 415, 422, 503, 507)}


async def require_api_key(
    state: Ctx,
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
    x_api_key: Annotated[str | None, Header(description="the API key")] = None,
) -> None:
    """Adding, changing and deleting need the key; with no key configured they are off, never open."""
    configured = state.settings.api_key
    if configured is None or not configured.get_secret_value():
        raise HTTPException(403, "adding, changing and deleting images is disabled: the server has no ALEXNET_API_KEY")
    given = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not given or not hmac.compare_digest(given.encode(), configured.get_secret_value().encode()):
        raise HTTPException(
            401, "missing or wrong API key (send Authorization: Bearer <key> or X-API-Key)", headers={"WWW-Authenticate": "Bearer"}
        )


Authorized = Annotated[None, Depends(require_api_key)]


@router.post(
    "/images",
    response_model=AddImagesResponse,
    status_code=201,
    responses=ERRORS,
    openapi_extra=multipart_body(
        multiple=True, fields={"label": {"type": "string", "maxLength": MAX_LABEL_CHARS, "description": "label for every image"}}
    ),
)
async def add_images(request: Request, ctx: Ctx, model: ModelDep, index: IndexDep, _: Authorized) -> AddImagesResponse:
    """Store images in the index; durable before the answer. The same bytes twice give the same id."""

    def check_fields(fields: dict[str, str]) -> None:  # before the forward pass (InvalidText: 422)
        check_text(fields.get("label"), "the label", MAX_LABEL_CHARS)

    done = await model.read_and_infer(request, multiple=True, store=True, check_fields=check_fields)
    label = done.fields.get("label") or None
    copies = [u.prepared.stored for u in done.uploads]  # the copies made from the decoded pixels (never the uploaded bytes)
    # while other weights are staged (or kept for a roll back), their vectors of each image go in the same transaction
    others = await model.embed_others(copies) if model.others else [{} for _ in copies]  # type: ignore[arg-type]
    items = []
    for u, v, more in zip(done.uploads, done.fc7.numpy(), others, strict=True):
        encoded, suffix = u.prepared.stored
        source = f"upload:{u.filename}" if u.filename else "upload"
        items.append(NewImage(v.copy(), u.sha256, encoded, suffix, u.width, u.height, source=source, label=label, others=more or None))
    results = await run_in_threadpool(index.add, items, near_duplicate_threshold=ctx.settings.near_duplicate_threshold)
    ctx.metrics.index_size.set(len(index))
    return AddImagesResponse(
        images=[
            AddedImage(
                id=r.id,
                filename=u.filename,
                created=r.created,
                near_duplicate_of=r.near_duplicate_of,
                near_duplicate_score=r.near_duplicate_score,
            )
            for u, r in zip(done.uploads, results, strict=True)
        ]
    )


@router.delete("/images/{image_id}", response_model=DeleteResponse, responses=ERRORS)
async def delete_image(image_id: ImageId, ctx: Ctx, index: IndexDep, _: Authorized) -> DeleteResponse:
    """Remove a stored image; it never appears in results again."""
    rec = await run_in_threadpool(index.delete, image_id)
    if rec is None:
        raise HTTPException(404, f"no image with id {image_id}")
    ctx.metrics.index_size.set(len(index))
    return DeleteResponse(id=image_id, deleted=True)


@router.get("/images/{image_id}", response_class=Response, responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **ERRORS})
async def get_image(image_id: ImageId, index: IndexDep) -> Response:
    """The stored, re-encoded image (never the uploaded bytes)."""
    found = await run_in_threadpool(index.image_data, image_id)
    if found is None:
        raise HTTPException(404, f"no image with id {image_id}")
    data, suffix = found
    media = "image/png" if suffix == ".png" else "image/jpeg"
    return Response(data, media_type=media, headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})


@router.get("/images/{image_id}/meta", response_model=ImageMeta, responses=ERRORS)
async def image_meta(image_id: ImageId, index: IndexDep) -> ImageMeta:
    """What is stored about an image: source, label, size, hash."""
    rec = await run_in_threadpool(index.get, image_id)
    if rec is None:
        raise HTTPException(404, f"no image with id {image_id}")
    return ImageMeta.of(rec)


@router.get("/images", response_model=ImageList, responses=ERRORS)
async def list_images(
    index: IndexDep,
    after: int = Query(0, ge=0, le=MAX_ID, description="the last id of the previous page (keyset pagination); 0 for the first"),
    limit: int = Query(50, ge=1, le=1000, description="images per page"),
    label: list[str] | None = Query(None, description=f"only images with this label (repeat for several, {MAX_LABEL_FILTERS} at most)"),
    source: str | None = Query(None, description="only images whose source starts with this (exact, case-sensitive)"),
) -> ImageList:
    """The gallery in id order, a page at a time. Pages stay consistent while images are added or deleted: a page
    starts after the last id of the one before, never at an offset."""
    if label is not None and len(label) > MAX_LABEL_FILTERS:
        raise HTTPException(422, f"at most {MAX_LABEL_FILTERS} labels per request")
    recs = await run_in_threadpool(index.records, after=after, limit=limit + 1, labels=label, source_prefix=source)
    more = len(recs) > limit
    page = recs[:limit]
    return ImageList(images=[ImageMeta.of(r) for r in page], next_after=page[-1].id if more else None)


@router.patch("/images/{image_id}", response_model=ImageMeta, responses=ERRORS)
async def update_image(image_id: ImageId, update: LabelUpdate, index: IndexDep, _: Authorized) -> ImageMeta:
    """Change an image's label (null removes it). Searches filtered by label see the change at once."""
    rec = await run_in_threadpool(index.set_label, image_id, update.label)
    if rec is None:
        raise HTTPException(404, f"no image with id {image_id}")
    return ImageMeta.of(rec)
