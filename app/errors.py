"""Every exception the service answers for, and its answer: one table (``ANSWERS``), registered once (``register``).

Routes, dependencies and the packages below them raise; nothing else turns an exception into a status code. A new
error gets a row here. Every answer's text goes through ``app.public.Scrubber`` (no store location, no secret).

| exception | status | headers |
|---|---|---|
| RequestValidationError, InvalidText | 422 | |
| DecodeError | 415 (not an allowed format), 413 (too large or too costly to decode), 400 (corrupt, empty), | Retry-After |
| | 503 (the decode budget is spent now) | on 503 |
| NotReady (model or index not loaded) | 503 | Retry-After when it may come |
| Overloaded | 503 | Retry-After |
| StoreUnavailable | 503 | Retry-After |
| StoreError (disk full, read-only, a refused write) | 507 | |
| ImageIndexError (an index that cannot be used) | 503 | |
| ClientGone | 499, no body | |
| HTTPException (404s, the API key, malformed multipart) | its own | its own |
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from app.metrics import Metrics
from app.overload import Overloaded, at_capacity
from app.uploads import ClientGone
from index.errors import ImageIndexError, InvalidText, StoreError, StoreUnavailable
from model.decode import DecodeError

log = logging.getLogger("app")

__all__ = ["ANSWERS", "Answer", "NotReady", "register"]


class NotReady(Exception):
    """A part the request needs (the model, the index) is not loaded; ``retry``: it may be soon (starting, or the
    store is out of reach), so the answer says when to try again."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class Answer:
    status: int
    detail: str | None  # None: no body
    headers: dict[str, str] = field(default_factory=dict)


RETRY_SOON = {"Retry-After": "1"}
RETRY_STORE = {"Retry-After": "2"}
RETRY_STARTING = {"Retry-After": "5"}
DECODE_STATUS = {"unsupported": 415, "too_large": 413, "busy": 503}  # other kinds (corrupt, empty): 400


def _validation(exc: RequestValidationError, request: Request) -> Answer:
    msgs = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
    return Answer(422, msgs or "invalid request")


def _decode(exc: DecodeError, request: Request) -> Answer:
    status = DECODE_STATUS.get(exc.kind, 400)
    return Answer(status, str(exc), RETRY_SOON if status == 503 else {})


def _writes(request: Request) -> bool:
    return request.method not in ("GET", "HEAD")


def _store_unavailable(exc: StoreUnavailable, request: Request) -> Answer:
    log.warning("the gallery's store cannot be reached: %s", exc)
    nothing = "; nothing was added, changed or deleted, try again" if _writes(request) else ""
    return Answer(503, f"the gallery's store cannot be reached{nothing}: {exc}", RETRY_STORE)


def _store_error(exc: StoreError, request: Request) -> Answer:
    log.error("the gallery's store refused a write: %s", exc)
    return Answer(507, f"the gallery's store could not be written, so nothing was added, changed or deleted: {exc}")


ANSWERS: dict[type[Exception], Callable[[Any, Request], Answer]] = {
    RequestValidationError: _validation,
    InvalidText: lambda exc, request: Answer(422, str(exc)),
    DecodeError: _decode,
    NotReady: lambda exc, request: Answer(503, str(exc), RETRY_STARTING if exc.retry else {}),
    Overloaded: lambda exc, request: Answer(503, at_capacity(str(exc)), RETRY_SOON),
    StoreUnavailable: _store_unavailable,
    StoreError: _store_error,
    ImageIndexError: lambda exc, request: Answer(503, f"the index cannot be used: {exc}"),
    ClientGone: lambda exc, request: Answer(499, None),  # (nginx's code for it; nobody reads it)
    HTTPException: lambda exc, request: Answer(exc.status_code, str(exc.detail), dict(exc.headers or {})),
}

REFUSED_UPLOAD = (400, 413, 415)  # counted in alexnet_rejected_uploads_total


def register(app: FastAPI, metrics: Metrics, scrub: Callable[[str], str]) -> None:
    """One handler per row of ``ANSWERS`` (Starlette picks the most specific class of an exception)."""

    def counted(exc: Exception, answer: Answer) -> None:
        if isinstance(exc, Overloaded):
            metrics.overloaded.inc()
        elif isinstance(exc, ClientGone):
            metrics.client_gone.inc()
        elif isinstance(exc, DecodeError | HTTPException) and answer.status in REFUSED_UPLOAD:
            metrics.rejected.labels(str(answer.status)).inc()

    def handler_for(answer_of: Callable[[Any, Request], Answer]) -> Callable[[Request, Exception], Any]:
        async def handle(request: Request, exc: Exception) -> Response:
            answer = answer_of(exc, request)
            counted(exc, answer)
            if answer.detail is None:
                return Response(status_code=answer.status, headers=answer.headers)
            return JSONResponse({"detail": scrub(answer.detail)}, status_code=answer.status, headers=answer.headers)

        return handle

    for cls, answer_of in ANSWERS.items():
        app.add_exception_handler(cls, handler_for(answer_of))
