"""Pure ASGI middleware that refuses requests before anything parses them.

``BodySizeLimit`` caps request bodies: a declared Content-Length over the cap is refused
at once; a body that streams past the cap (no Content-Length, or a false one) is cut off
when it crosses it. Either way: 413, and no byte of it reaches the multipart parser or an
image decoder.

``EarlyRefusal`` answers 503 to the routes that declare ``REFUSED_EARLY`` while the batcher is saturated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REFUSED_EARLY", "BodySizeLimit", "BodyTooLarge", "EarlyRefusal", "at_capacity"]


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body exceeds the limit of {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)


def at_capacity(why: str) -> str:
    """The detail of the 503 a saturated batcher's refusal gets, here or from the route's own admission."""
    return f"the service is at capacity, try again shortly: {why}"


REFUSED_EARLY = {"x-refused-early": True}  # route metadata (``openapi_extra``), so clients see it in /openapi.json too


class EarlyRefusal:
    """While the batcher is saturated (``Batcher.saturated``), the routes that declare ``REFUSED_EARLY`` in their
    OpenAPI metadata get their 503 with ``Retry-After`` here, from the request line, instead of after routing,
    dependencies and the route's own ``admit``: under 2x overload two refusals come for every request taken, and
    each refusal's trip through the framework took CPU from the requests taken. A route declares it when every
    request it takes runs the model and needs nothing checked first (``POST /images`` runs the model too, but its
    API key is checked first). The route still admits or refuses each request itself; this is the cheap early test."""

    def __init__(self, app: ASGIApp, on_refusal: Callable[[], None]) -> None:
        self.app, self.on_refusal = app, on_refusal
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
            batcher = getattr(getattr(scope["app"].state, "service", None), "batcher", None)
            why = batcher.saturated() if batcher is not None else None
            if why is not None:
                self.on_refusal()
                body = json.dumps({"detail": at_capacity(why)}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"retry-after", b"1")]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
