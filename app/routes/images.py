from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.schemas import AddedImage, AddImagesResponse, DeleteResponse, ErrorResponse, ImageMeta
from app.state import Ctx, ServiceState, get_state
from app.uploads import multipart_body, read_uploads
from index.store import NewImage, StoreError, StoreUnavailable
from model.decode import encode_for_store

router = APIRouter(tags=["images"])

ERRORS: dict[int | str, dict[str, object]] = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 415, 422, 503, 507)}
MAX_ID = 2**63 - 1  # SQLite INTEGER
ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="id of a stored image")]


def require_api_key(
    state: Annotated[ServiceState, Depends(get_state)],
    authorization: Annotated[str | None, Header(description="Bearer <API key>")] = None,
    x_api_key: Annotated[str | None, Header(description="the API key")] = None,
) -> None:
    """Adding and deleting need the key; with no key configured they are off, never open."""
    configured = state.settings.api_key
    if configured is None or not configured.get_secret_value():
        raise HTTPException(403, "adding and deleting images is disabled: the server has no ALEXNET_API_KEY")
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
        multiple=True, fields={"label": {"type": "string", "maxLength": 200, "description": "label for every image"}}
    ),
)
async def add_images(request: Request, ctx: Ctx, _: Authorized) -> AddImagesResponse:
    """Store images in the index; durable before the answer. The same bytes twice give the same id."""
    index = ctx.require_index()
    s = ctx.settings
    async with ctx.announced():
        uploads, fields = await read_uploads(
            request, max_files=s.max_files, max_fields=s.max_fields, max_pixels=s.max_pixels, multiple=True, run=ctx.cpu_work
        )
        label = fields.get("label") or None
        if label is not None and len(label) > 200:
            raise HTTPException(422, "label is longer than 200 characters")
        _probs, fc7 = await ctx.infer([u.decoded.image for u in uploads])
    vectors = fc7.numpy()
    encoded = await ctx.cpu_work(lambda: [encode_for_store(u.decoded.image) for u in uploads])
    items = [
        NewImage(
            vector=v.copy(),
            sha256=u.decoded.sha256,
            encoded=data,
            suffix=suffix,
            width=u.decoded.width,
            height=u.decoded.height,
            source=f"upload:{u.filename}" if u.filename else "upload",
            label=label,
        )
        for u, v, (data, suffix) in zip(uploads, vectors, encoded, strict=True)
    ]
    try:
        results = await run_in_threadpool(index.add, items, near_duplicate_threshold=s.near_duplicate_threshold)
    except StoreUnavailable as e:
        detail = f"the gallery's store cannot be reached, nothing was added; try again: {e}"
        raise HTTPException(503, detail, headers={"Retry-After": "2"}) from e
    except StoreError as e:
        raise HTTPException(507, f"could not store the images (nothing was added): {e}") from e
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
            for u, r in zip(uploads, results, strict=True)
        ]
    )


@router.delete("/images/{image_id}", response_model=DeleteResponse, responses=ERRORS)
async def delete_image(image_id: ImageId, ctx: Ctx, _: Authorized) -> DeleteResponse:
    """Remove a stored image; it never appears in results again."""
    index = ctx.require_index()
    try:
        rec = await run_in_threadpool(index.delete, image_id)
    except StoreUnavailable as e:
        raise HTTPException(503, f"the gallery's store cannot be reached, image {image_id} is still stored; try again: {e}",
                            headers={"Retry-After": "2"}) from e  # fmt: skip
    except StoreError as e:
        raise HTTPException(507, f"could not delete image {image_id} (it is still stored): {e}") from e
    if rec is None:
        raise HTTPException(404, f"no image with id {image_id}")
    ctx.metrics.index_size.set(len(index))
    return DeleteResponse(id=image_id, deleted=True)


@router.get("/images/{image_id}", response_class=Response, responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **ERRORS})
async def get_image(image_id: ImageId, ctx: Ctx) -> Response:
    """The stored, re-encoded image (never the uploaded bytes)."""
    index = ctx.require_index()
    found = await run_in_threadpool(index.image_data, image_id)
    if found is None:
        raise HTTPException(404, f"no image with id {image_id}")
    data, suffix = found
    media = "image/png" if suffix == ".png" else "image/jpeg"
    return Response(data, media_type=media, headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})


@router.get("/images/{image_id}/meta", response_model=ImageMeta, responses=ERRORS)
async def image_meta(image_id: ImageId, ctx: Ctx) -> ImageMeta:
    """What is stored about an image: source, label, size, hash."""
    index = ctx.require_index()
    rec = await run_in_threadpool(index.get, image_id)
    if rec is None:
        raise HTTPException(404, f"no image with id {image_id}")
    return ImageMeta(
        id=rec.id,
        sha256=rec.sha256,
        source=rec.source,
        label=rec.label,
        width=rec.width,
        height=rec.height,
        created=rec.created,
        image_url=f"/images/{rec.id}",
    )
