"""Overload, as one unit: how many images the service takes on, who is refused, and how early.

The bound (``ALEXNET_MAX_QUEUE_IMAGES``) counts the images in flight: those of every request from the
moment it is admitted until its forward pass is done (one each until its images are known), or the images
waiting for the network, whichever is more. Under overload the work piles up in reading and decoding before
it reaches the queue, and a request in its forward pass still waits for its answer, so the bound counts them
all: a request admitted waits for at most ``max_queue`` images ahead of it. Three places refuse, all with the
same test and the same 503 with ``Retry-After`` (``Overloaded``, answered by ``app/errors.py``):

- ``EarlyRefusal``, middleware, from the request line alone, for the routes that declare ``REFUSED_EARLY``
  in their ``openapi_extra``;
- ``Admission.admit``, in the route, before the body is read (``app/state.py``, ``ModelContext.predict``);
- ``Admission.enqueue``, when the images reach the batcher's queue (a request with many images).

The batcher (``app/batching.py``) owns one ``Admission`` and reports to it what it queues and takes.
"""

from __future__ import annotations

import contextvars
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["REFUSED_EARLY", "Admission", "EarlyRefusal", "Overloaded", "at_capacity"]

REFUSED_EARLY = {"x-refused-early": True}  # route metadata (``openapi_extra``), so clients see it in /openapi.json too


class Overloaded(Exception):
    """The service holds ``max_queue`` images already: the request is refused at once (503 with Retry-After)
    rather than queued behind work that would make its wait, and everyone's after it, grow without limit."""


def at_capacity(why: str) -> str:
    """The detail of every overload 503."""
    return f"the service is at capacity, try again shortly: {why}"


class _Announcement:
    def __init__(self, admission: Admission) -> None:
        self.admission, self.open = admission, True
        self.extra = 0  # images beyond the first, once submitted
        admission.arriving += 1

    def close(self) -> None:
        if self.open:
            self.open = False
            self.admission.arriving -= 1


_announced: contextvars.ContextVar[_Announcement | None] = contextvars.ContextVar("announced", default=None)


class Admission:
    """The counts the bound is tested on, kept on the event loop's thread (no locks)."""

    def __init__(self, max_queue: int = 0) -> None:
        self.max_queue = max_queue  # 0: no bound
        self.arriving = 0  # requests announced and not yet submitted (the batcher waits for them to fill a batch)
        self.queued = 0  # images submitted and not yet taken into a batch
        self._open = 0  # requests announced and not yet answered: read, decoded, queued or in a forward pass
        self._extra = 0  # the images of open requests beyond one each

    @asynccontextmanager
    async def announce(self) -> AsyncIterator[None]:
        """Around a request's reading, decoding and forward pass: it counts against the bound throughout."""
        a = _Announcement(self)
        self._open += 1
        token = _announced.set(a)
        try:
            yield
        finally:
            a.close()
            self._open -= 1
            self._extra -= a.extra
            _announced.reset(token)

    def admit(self) -> None:
        """Called by an announced request before its body is read: ``Overloaded`` when the others fill the bound. A
        refused upload costs the server its headers only, not the parsing and decoding of its body, so that one
        process can refuse requests as fast as they come."""
        others = self._open - 1 if _announced.get() is not None else self._open
        if self._full(others):
            raise Overloaded(self._why(others))

    def saturated(self) -> str | None:
        """Why a request not yet announced would be refused now (``admit``'s test), or None."""
        return self._why(self._open) if self._full(self._open) else None

    def enqueue(self, images: int) -> None:
        """The request's images reach the queue: they count as its own from now on (a request announced as one
        image may hold many); ``Overloaded`` when they would overfill a queue that is not empty."""
        a = _announced.get()
        if a is not None:
            a.close()  # arrived
            if not a.extra and images > 1:
                a.extra = images - 1
                self._extra += a.extra
        if self.max_queue and self.queued and self.queued + images > self.max_queue:
            raise Overloaded(f"{self.queued} images are waiting for the network already (the bound is {self.max_queue})")
        self.queued += images

    def taken(self, images: int) -> None:
        """The batcher took that many images off the queue into a batch."""
        self.queued -= images

    def _full(self, others: int) -> bool:
        return bool(self.max_queue) and max(self.queued, others + self._extra) >= self.max_queue

    def _why(self, others: int) -> str:
        return (
            f"{others} other requests ({others + self._extra} images) are being read, decoded or computed and "
            f"{self.queued} images wait for the network (the bound is {self.max_queue})"
        )


class EarlyRefusal:
    """While the admission is saturated, the routes that declare ``REFUSED_EARLY`` in their OpenAPI metadata get their
    503 with ``Retry-After`` here, from the request line, instead of after routing, dependencies and the route's own
    ``admit``: under 2x overload two refusals come for every request taken, and each refusal's trip through the
    framework took CPU from the requests taken. A route declares it when every request it takes runs the model and
    needs nothing checked first (``POST /images`` runs the model too, but its API key is checked first). The route
    still admits or refuses each request itself; this is the cheap early test. ``admission(app)`` finds the
    app's ``Admission`` (None before the service has loaded)."""

    def __init__(self, app: ASGIApp, on_refusal: Callable[[], None], admission: Callable[[object], Admission | None]) -> None:
        self.app, self.on_refusal, self.admission = app, on_refusal, admission
        self._declared: list[tuple[re.Pattern[str], str]] | None = None  # (path, method), read at the first request

    def _refusable(self, scope: Scope) -> bool:
        if self._declared is None:
            paths = scope["app"].openapi().get("paths", {}) if hasattr(scope["app"], "openapi") else {}
            self._declared = [
                (compile_path(template)[0], method.upper())
                for template, operations in paths.items()
                for method, operation in operations.items()
                if isinstance(operation, dict) and operation.get("x-refused-early")
            ]
        return any(method == scope["method"] and regex.match(scope["path"]) for regex, method in self._declared)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._refusable(scope):
            admission = self.admission(scope["app"])
            why = admission.saturated() if admission is not None else None
            if why is not None:
                self.on_refusal()
                body = json.dumps({"detail": at_capacity(why)}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"retry-after", b"1")]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
