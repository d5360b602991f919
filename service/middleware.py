"""ASGI middleware of the app: request ids, request metrics and logging, and the body size limit."""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer import logs
from service.errors import error_response
from service.metrics import Metrics

log = logging.getLogger("ragqa.service")
MAX_BODY_BYTES = 64 * 1024
REQUEST_ID = re.compile(r"[\w.:-]{1,64}")


class RequestIdMiddleware:
    """Gives each request an id (the caller's `X-Request-ID` when it is a sane token, else a new one),
    puts it on every log line written while serving it, and returns it as `X-Request-ID`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        token = logs.REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logs.REQUEST_ID.reset(token)


class MetricsMiddleware:
    """Counts requests and times them per route template (not per raw path), and logs each one
    (method, route, status, milliseconds: never a question or a document's text)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(seconds)
            log.info(
                "http.request",
                extra={"method": method, "route": path, "status": status, "ms": round(seconds * 1000, 2)},
            )


def _too_large_message(limit: int) -> str:
    return f"request body too large: the limit is {limit} bytes"


def _too_large(limit: int, path: str) -> JSONResponse:
    return error_response(path, 413, _too_large_message(limit))


class BodyLimitMiddleware:
    """413 with a JSON error for a body over `limit` bytes: at once when Content-Length says so,
    otherwise (chunked bodies) as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, limit: int, uploads: int) -> None:
        self.app = app
        self.limit = limit
        self.uploads = uploads  # the limit of POST /v1/documents, which carries files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        uploading = scope.get("method") == "POST" and scope.get("path") == "/v1/documents"
        limit = self.uploads if uploading else self.limit
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit, scope.get("path", ""))(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # raised inside the route: the 413 handler answers in JSON
                    raise StarletteHTTPException(413, _too_large_message(limit))
            return message

        await self.app(scope, limited, send)
