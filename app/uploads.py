"""Reading multipart uploads within limits, and decoding them safely off the event loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from fastapi import HTTPException, Request
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from model.decode import Decoded, DecodeError, decode_image
from model.decode_cost import DecodeBudget

__all__ = ["ClientGone", "Upload", "multipart_body", "read_uploads"]


class ClientGone(Exception):
    """The client closed the connection before its images reached the network (while uploading, or after)."""


@dataclass
class Upload:
    """One uploaded image as the route keeps it: what the model and the gallery need, never the full-size pixels
    (they are freed as soon as ``prepare`` has made these, in the thread that decoded them)."""

    filename: str | None
    format: str
    sha256: str  # of the bytes as received
    width: int  # declared, upright
    height: int
    prepared: Any  # what ``read_uploads``'s ``prepare`` made of the decoded image


def _decode_and_prepare(data: bytes, prepare: Callable[[Image.Image], Any], **decode: Any) -> tuple[Decoded, Any]:
    """Decode, make what the request needs, and let the full-size image go: the returned ``Decoded`` holds none."""
    decoded = decode_image(data, **decode)
    prepared = prepare(decoded.image)
    return replace(decoded, image=None), prepared  # type: ignore[arg-type]


def multipart_body(*, multiple: bool, fields: dict[str, dict[str, object]] | None = None) -> dict[str, object]:
    """OpenAPI ``requestBody`` for an upload route (parsed by hand, so that its limits are ours)."""
    binary = {"type": "string", "format": "binary"}
    props: dict[str, object] = {"file": {**binary, "description": "one image (JPEG, PNG, WebP, GIF, BMP or TIFF)"}}
    if multiple:
        props["files"] = {"type": "array", "items": binary, "description": "several images"}
    props.update(fields or {})
    schema = {"type": "object", "properties": props}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


async def read_uploads(
    request: Request,
    *,
    max_files: int,
    max_fields: int,
    max_pixels: int,
    multiple: bool,
    min_side: int | None = None,
    min_long_side: int | None = None,
    run: Callable[..., Awaitable[Any]] = run_in_threadpool,
    prepare: Callable[[Image.Image], Any] = lambda image: image,
    budget: DecodeBudget | None = None,
) -> tuple[list[Upload], dict[str, str]]:
    """The images of fields ``file`` (and ``files`` when ``multiple``), as ``prepare`` made them from their decoded
    pixels, and the text fields. Decoding and ``prepare`` run together through ``run`` (a worker thread; the
    service passes ``ServiceState.cpu_work``), one image at a time, each within ``budget``; a JPEG is decoded at
    a reduced scale that keeps ``min_side`` and ``min_long_side`` (``decode_image``)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise HTTPException(
            415 if ctype else 400, f"expected a multipart/form-data upload with a 'file' field, got {ctype or 'no content type'}"
        )
    try:
        form = await request.form(max_files=max_files, max_fields=max_fields, max_part_size=64 * 1024)
    except ClientDisconnect as e:
        raise ClientGone from e
    except MultiPartException as e:
        raise HTTPException(400, f"malformed multipart body: {e.message}") from e
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"malformed multipart body: {e}") from e
    try:
        names = ("file", "files") if multiple else ("file",)
        parts = [(name, v) for name in names for v in form.getlist(name)]
        unexpected = sorted({k for k, v in form.multi_items() if isinstance(v, UploadFile) and k not in names})
        if not parts:
            hint = f" (got file fields {unexpected})" if unexpected else ""
            raise HTTPException(400, f"no image uploaded: send it as the multipart field 'file'{' or files' if multiple else ''}{hint}")
        if not multiple and len(parts) > 1:
            raise HTTPException(400, "send one image in the field 'file'")
        if len(parts) > max_files:
            raise HTTPException(400, f"at most {max_files} images per request")
        uploads: list[Upload] = []
        for name, part in parts:
            if not isinstance(part, UploadFile):
                raise HTTPException(400, f"field '{name}' must be a file upload, got a text value")
            data = await part.read()
            try:
                decoded, prepared = await run(
                    _decode_and_prepare, data, prepare, max_pixels=max_pixels, min_side=min_side, min_long_side=min_long_side, budget=budget
                )
            except DecodeError as e:  # named by its file (app/errors.py gives the status)
                raise DecodeError(e.kind, f"{part.filename or name}: {e}") from e
            del data
            uploads.append(Upload(part.filename, decoded.format, decoded.sha256, decoded.width, decoded.height, prepared))
        text = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return uploads, text
    finally:
        await form.close()
