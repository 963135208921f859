"""Pure ASGI middleware that refuses requests before anything parses them.

``BodySizeLimit`` caps request bodies: a declared Content-Length over the cap is refused
at once; a body that streams past the cap (no Content-Length, or a false one) is cut off
when it crosses it. Either way: 413, and no byte of it reaches the multipart parser or an
image decoder.

(Refusals for overload, which also come before parsing, are in ``app/overload.py``.)
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodySizeLimit", "BodyTooLarge"]


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, larger: dict[tuple[str, str], int] | None = None) -> None:
        """``larger``: (method, path) -> the cap of the one route that takes more (a weights file)."""
        self.app, self.default_bytes, self.larger = app, max_bytes, larger or {}

    async def _reject(self, send: Send, max_bytes: int) -> None:
        body = json.dumps({"detail": f"request body exceeds the limit of {max_bytes} bytes"}).encode()
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
        max_bytes = self.larger.get((scope.get("method", ""), scope.get("path", "")), self.default_bytes)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > max_bytes:
                    await self._reject(send, max_bytes)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
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
                await self._reject(send, max_bytes)
