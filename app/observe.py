"""What the service tells its operators about each request: an id, an access-log line, metrics.

- Request ids: a client's ``X-Request-ID`` (up to 128 characters of ``A-Za-z0-9._:/+=-``) is kept,
  anything else gets a fresh one; it goes back in the response's ``X-Request-ID`` and into every
  log line written while the request runs (``request_id``).
- The access log (logger ``app.access``): method, route template (``/images/{image_id}``, never the
  raw path), status, latency, request id; as text or, with ``ALEXNET_LOG_FORMAT=json``, one JSON
  object per line like every other log line.
- Metrics per route template (``app.metrics``); every label comes from a closed set (the standard
  methods or ``other``, a route template or ``unmatched``, the status the server sent). A request refused before routing (the body-size cap,
  ``app.limits``) is counted under the route it was sent to and as a rejected upload.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics
from index.store import redact_url

__all__ = ["REQUEST_ID", "JsonFormatter", "RequestTelemetry", "configure_logging"]

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
ACCESS_FIELDS = ("method", "route", "status", "duration_ms")

access_log = logging.getLogger("app.access")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class _Redacting(logging.Formatter):
    """Any formatter's lines with every database password in them redacted (``index.store.redact_url``): a
    connection string can reach a log line through an exception's text, whoever logs it."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(self.inner.format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and the access fields if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        entry.update({k: getattr(record, k) for k in ACCESS_FIELDS if hasattr(record, k)})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(fmt: str = "text", level: int | str | None = None) -> None:
    """Every log line of this process through one stderr handler, in ``fmt`` (text or json), with the request id.
    Idempotent: a second call replaces the format."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_alexnet", False)), None)
    if handler is None:
        for old in list(root.handlers):  # basicConfig's, or an earlier app's in this process
            root.removeHandler(old)
        handler = logging.StreamHandler(sys.stderr)
        handler._alexnet = True  # type: ignore[attr-defined]
        handler.addFilter(_RequestIdFilter())
        root.addHandler(handler)
    handler.setFormatter(_Redacting(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)))
    if level is not None:
        root.setLevel(level)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _method_label(method: str) -> str:
    """A request's method as a metric label and log field: one of ``METHODS``, or ``other``. Clients choose the
    method freely (any token), and every distinct label value would be a new series kept for the process's life."""
    return method if method in METHODS else "other"


def _route_template(scope: Scope) -> str:
    """The template of the route that served the request, or that would have (requests refused before routing)."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    app: Any = scope.get("app")
    if app is None or not hasattr(app, "openapi"):
        return "unmatched"
    templates = getattr(app.state, "_route_patterns", None)
    if templates is None:  # the documented routes' templates, compiled once
        templates = [(compile_path(t)[0], t, {m.upper() for m in ops}) for t, ops in app.openapi().get("paths", {}).items()]
        app.state._route_patterns = templates
    path, method = scope.get("path", ""), scope.get("method", "")
    return next((t for regex, t, methods in templates if method in methods and regex.match(path)), "unmatched")


class RequestTelemetry:
    """The outermost middleware: request id, access log, request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), "")
        request_id = given if _VALID_ID.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            method, route = _method_label(scope.get("method", "")), _route_template(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(seconds)
            if status == 413 and scope.get("route") is None:  # the body-size cap answered before any route ran
                self.metrics.rejected.labels("413").inc()
            fields = {"method": method, "route": route, "status": status, "duration_ms": round(1000 * seconds, 1)}
            access_log.info("%s %s %d %.1f ms", method, route, status, 1000 * seconds, extra=fields)
            REQUEST_ID.reset(token)
