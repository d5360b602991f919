"""The HTTP API (v1): FastAPI routes, error handling and metrics. `create_app()` builds the app."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer.embedding import load_embedder
from service import qa
from service.config import ServiceSettings
from service.encoder import BatchingEncoder
from service.holder import IndexHolder, NotReadyError
from service.metrics import Metrics
from service.retrieval import Retriever, load_reranker
from service.schemas import (
    AskRequest,
    AskResponse,
    DocumentDetail,
    DocumentList,
    DocumentSummary,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)

log = logging.getLogger("ragqa.service")
MAX_BODY_BYTES = 64 * 1024
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "invalid input"},
    503: {"model": ErrorResponse, "description": "no index loaded yet"},
}


class MetricsMiddleware:
    """Counts requests and times them per route template (not per raw path)."""

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
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - started)


def _too_large() -> JSONResponse:
    message = f"request body too large: the limit is {MAX_BODY_BYTES} bytes"
    return JSONResponse({"error": message}, status_code=413)


class BodyLimitMiddleware:
    """413 with a JSON error for a body over `limit` bytes: at once when Content-Length says so,
    otherwise (chunked bodies) as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await _too_large()(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # raised inside the route: the 413 handler answers in JSON
                    raise StarletteHTTPException(413)
            return message

        await self.app(scope, limited, send)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    metrics = Metrics()
    holder = IndexHolder(settings.store, settings.model, settings.reload_interval)
    parts: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import faiss

        # One query at a time needs no OpenMP team, and idle OpenMP threads spinning after a search
        # take CPU from the model's threads.
        faiss.omp_set_num_threads(1)
        embedder = load_embedder(settings.model, settings.batch_size)
        encoder = BatchingEncoder(embedder, settings.max_batch)
        # The model's first call costs seconds: make it before /readyz says ready, on the encoder's
        # own thread (the only thread that runs the model in the service).
        encoder.submit("warm up the model before the first question").result()
        reranker = load_reranker(settings.reranker) if settings.reranker else None
        parts["qa"] = qa.QAService(settings, holder, encoder, Retriever(settings, reranker))
        holder.start()
        try:
            yield
        finally:
            holder.stop()
            await parts["qa"].close()
            encoder.close()

    app = FastAPI(
        title="ragqa",
        version="1",
        summary="Questions answered from your documents, with citations pinned to exact spans.",
        lifespan=lifespan,
    )
    # Not FastAPI's max_body_size: its limiter answers a too-large Content-Length with plain text,
    # replacing any JSON response from inside. This one answers 413 in JSON like every other error.
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY_BYTES)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts 413s too

    def service() -> qa.QAService:
        return parts["qa"]  # type: ignore[no-any-return]

    # --- errors: JSON with a message a person can read -------------------------------------

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":  # its loc holds a character position, not a field
                reason = (error.get("ctx") or {}).get("error", "")
                position = next((p for p in error.get("loc", ()) if isinstance(p, int)), None)
                at = f" at character {position}" if position is not None else ""
                problems.append(f"body: invalid JSON{at}" + (f" ({reason})" if reason else ""))
                continue
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()
        ]
        return JSONResponse(
            {"error": "invalid request: " + "; ".join(problems), "detail": detail}, status_code=422
        )

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
        return JSONResponse({"error": f"not ready: {exc}"}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 413:
            message = f"request body too large: the limit is {MAX_BODY_BYTES} bytes"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    # --- v1 ------------------------------------------------------------------------------

    @app.post("/v1/ask", response_model=AskResponse, responses=ERRORS)
    async def ask(body: AskRequest, request: Request) -> Response | AskResponse:
        """Answer a question from the documents, citing exact spans. `"stream": true` (or
        `Accept: text/event-stream`) streams server-sent events: passages, delta, citation, done."""
        events = service().answer_events(body)
        # Retrieval happens before the first event: its errors (503 while no index is loaded) are
        # still HTTP errors here, not a stream that breaks off.
        first = await anext(events)
        if body.stream or "text/event-stream" in request.headers.get("accept", ""):
            return EventSourceResponse(_sse(first, events, metrics))
        async for name, data in events:
            if name == "done":
                metrics.observe_answer(data)
                return data  # type: ignore[no-any-return]
        raise AssertionError("an answer ends with its done event")

    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
    async def search(body: SearchRequest) -> SearchResponse:
        """The passages that best match a query: dense and BM25 fused, both ranks on each."""
        result = await service().search(body.query, body.top_k)
        metrics.observe_stages(result.timings_ms)
        return SearchResponse(
            results=qa.passages_of(result.index, result.hits), index_version=result.index.version_id
        )

    @app.get("/v1/documents", response_model=DocumentList, responses=ERRORS)
    async def documents() -> DocumentList:
        index = holder.current
        counts: dict[str, int] = {}
        for chunk in index.version.chunks:
            counts[chunk.doc_id] = counts.get(chunk.doc_id, 0) + 1
        return DocumentList(
            documents=[
                DocumentSummary(
                    doc_id=d.doc_id, title=d.title, source=d.source, chunks=counts.get(d.doc_id, 0)
                )
                for d in index.version.documents.values()
            ]
        )

    @app.get(
        "/v1/documents/{doc_id:path}",
        response_model=DocumentDetail,
        responses={**ERRORS, 404: {"model": ErrorResponse, "description": "no such document"}},
    )
    async def document(doc_id: str) -> DocumentDetail | JSONResponse:
        """One document's full text; ids may hold `/` and `#` (send them URL-encoded)."""
        index = holder.current
        found = index.version.documents.get(doc_id)
        if found is None:
            return JSONResponse({"error": f"no document with id {doc_id!r}"}, status_code=404)
        return DocumentDetail(
            doc_id=found.doc_id,
            title=found.title,
            source=found.source,
            text=found.text,
            metadata=found.metadata,
        )

    # --- operations ----------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz() -> Any:
        if not holder.ready:
            return JSONResponse(
                {"error": f"not ready: {holder.last_error or 'no index loaded'}"}, status_code=503
            )
        return {"status": "ready", "index_version": holder.current.version_id}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        if holder.ready:  # the index gauges are read at scrape time, not on every request
            index = holder.current
            metrics.set_index(
                index.version_id,
                index.version.manifest["model"]["name"],
                len(index.version.documents),
                len(index.version.chunks),
            )
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    static = resources.files("service").joinpath("static")
    page = static.joinpath("index.html").read_text(encoding="utf-8")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        """The chat page. Its policy lets it load only this app's own script and style and talk only
        to this app, so even text that slipped into the page as HTML could not run or call out."""
        return HTMLResponse(page, headers=PAGE_HEADERS)

    return app


async def _sse(
    first: tuple[str, Any], events: AsyncIterator[tuple[str, Any]], metrics: Metrics
) -> AsyncIterator[bytes]:
    """Server-sent events: passages, delta and citation events, then done (the response without the
    answer, citations and passages, which came before). A failure after the stream has begun is an
    `error` event, the stream's last."""

    def event(name: str, data: Any) -> bytes:
        return format_sse_event(event=name, data_str=json.dumps(data, ensure_ascii=False))

    name, data = first
    yield event(name, [p.model_dump() for p in data])
    try:
        async for name, data in events:
            if name == "delta":
                yield event(name, {"text": data})
            elif name == "citation":
                yield event(name, data.model_dump())
            else:
                metrics.observe_answer(data)
                yield event(name, data.model_dump(exclude={"passages", "citations", "answer"}))
    except Exception:
        log.exception("answer.stream_failed")
        yield event("error", {"error": "the service failed while answering; the answer is incomplete"})
