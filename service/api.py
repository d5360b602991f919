"""The HTTP API (v1): FastAPI routes, error handling and metrics. `create_app()` builds the app."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.sse import EventSourceResponse, format_sse_event
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from indexer import logs
from indexer.embedding import load_embedder
from service import qa, writes
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
    JobAccepted,
    JobStatus,
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
STREAM_SCHEMA = {
    "type": "object",
    "description": "with `stream: true`, server-sent events: passages, then delta and citation events, "
    "then done (or error); each event's data is JSON",
    "properties": {
        "event": {"type": "string", "enum": ["passages", "delta", "citation", "done", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["event", "data"],
}
ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "invalid input"},
    503: {"model": ErrorResponse, "description": "no index loaded yet"},
}


# --- who may call what: every route declares one of these, or the app refuses to start --------


def public() -> None:
    """Open to everyone."""


def read_access(request: Request) -> None:
    """Open, unless RAGQA_READ_REQUIRES_KEY=true: then an API key is needed."""
    settings: ServiceSettings = request.app.state.settings
    if settings.read_requires_key:
        writes.check_key(settings, request, "reading")


def write_access(request: Request) -> None:
    """Always an API key (RAGQA_API_KEYS); without configured keys the route is disabled (403)."""
    writes.check_key(request.app.state.settings, request, "the write API")


ACCESS = {public: "public", read_access: "read", write_access: "write"}


def route_access(app: FastAPI) -> dict[str, str]:
    """ "METHODS path" → public | read | write for every route; a RuntimeError names any route that
    declares none (or several) of the three."""
    fastapi_own = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    found: dict[str, str] = {}
    unmarked = []
    for route in app.routes:
        path = getattr(route, "path", repr(route))
        name = f"{','.join(sorted(getattr(route, 'methods', None) or ['*']))} {path}"
        if isinstance(route, APIRoute):
            levels = {ACCESS[d.call] for d in route.dependant.dependencies if d.call in ACCESS}
            if len(levels) == 1:
                found[name] = levels.pop()
                continue
        elif path in fastapi_own or (isinstance(route, Mount) and path == "/static"):
            found[name] = "public"  # the API's documentation, and the chat page's own assets
            continue
        unmarked.append(name)
    if unmarked:
        raise RuntimeError(f"routes that are neither keyed nor explicitly public: {', '.join(unmarked)}")
    return found


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


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": _too_large_message(limit)}, status_code=413)


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
            await _too_large(limit)(scope, receive, send)
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


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    metrics = Metrics()
    holder = IndexHolder(settings.store, settings.model, settings.reload_interval)
    parts: dict[str, Any] = {}
    jobs = writes.Jobs(settings)

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
        jobs.start()
        try:
            yield
        finally:
            await jobs.stop()
            holder.stop()
            await parts["qa"].close()
            encoder.close()

    app = FastAPI(
        title="ragqa",
        version="1",
        summary="Questions answered from your documents, with citations pinned to exact spans.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Not FastAPI's max_body_size: its limiter answers a too-large Content-Length with plain text,
    # replacing any JSON response from inside. This one answers 413 in JSON like every other error.
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY_BYTES, uploads=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # counts 413s too
    app.add_middleware(RequestIdMiddleware)  # outermost: every line logged for a request has its id

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

    @app.exception_handler(writes.UploadError)
    async def bad_upload(request: Request, exc: writes.UploadError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, exc: NotReadyError) -> JSONResponse:
        return JSONResponse({"error": f"not ready: {exc}"}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    # --- v1 ------------------------------------------------------------------------------

    @app.post(
        "/v1/ask",
        response_model=AskResponse,
        responses={**ERRORS, 200: {"content": {"text/event-stream": {"schema": STREAM_SCHEMA}}}},
        dependencies=[Depends(read_access)],
    )
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

    @app.post(
        "/v1/search", response_model=SearchResponse, responses=ERRORS, dependencies=[Depends(read_access)]
    )
    async def search(body: SearchRequest) -> SearchResponse:
        """The passages that best match a query: dense and BM25 fused, both ranks on each."""
        result = await service().search(body.query, body.top_k)
        metrics.observe_stages(result.timings_ms)
        return SearchResponse(
            results=qa.passages_of(result.index, result.hits), index_version=result.index.version_id
        )

    @app.get(
        "/v1/documents", response_model=DocumentList, responses=ERRORS, dependencies=[Depends(read_access)]
    )
    async def documents() -> DocumentList:
        index = holder.current
        counts = index.chunks_per_document
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
        dependencies=[Depends(read_access)],
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

    # --- writes: keyed -------------------------------------------------------------------

    WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorResponse, "description": "no valid API key"},
        403: {"model": ErrorResponse, "description": "the write API is disabled (no keys configured)"},
    }

    @app.post(
        "/v1/documents",
        status_code=202,
        response_model=JobAccepted,
        responses={
            **WRITE_ERRORS,
            400: {"model": ErrorResponse, "description": "an unusable file name"},
            413: {"model": ErrorResponse, "description": "too large"},
            415: {"model": ErrorResponse, "description": "unsupported file type"},
        },
        dependencies=[Depends(write_access)],
    )
    async def upload(
        files: Annotated[list[UploadFile], File(description="one or more documents")],
    ) -> JobAccepted:
        """Store the files in the corpus folder and start an index job (202 with its id). Names may not
        hold folders; a file of the same name is replaced. Nothing is written unless every file is valid."""
        names = [writes.safe_name(f.filename) for f in files]
        if len(set(names)) != len(names):
            raise writes.UploadError(400, "two files have the same name")
        total = sum(f.size or 0 for f in files)
        if total > settings.max_upload_bytes:
            raise writes.UploadError(
                413, f"the files total {total} bytes; the limit is {settings.max_upload_bytes}"
            )
        settings.corpus.mkdir(parents=True, exist_ok=True)
        targets = [writes.inside(settings.corpus, name) for name in names]
        for upload, target in zip(files, targets, strict=True):
            await upload.seek(0)
            partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")  # hidden: never indexed
            try:
                with partial.open("wb") as out:
                    while chunk := await upload.read(1024 * 1024):
                        out.write(chunk)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        job = jobs.submit("upload", names)
        log.info("documents.uploaded", extra={"job_id": job.job_id, "files": names, "bytes": total})
        return JobAccepted(job_id=job.job_id, files=names)

    @app.delete(
        "/v1/documents/{doc_id:path}",
        status_code=202,
        response_model=JobAccepted,
        responses={**WRITE_ERRORS, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
        dependencies=[Depends(write_access)],
    )
    async def delete_document(doc_id: str) -> JobAccepted | JSONResponse:
        """Remove the document's file from the corpus folder and start an index job (202)."""
        root = settings.corpus.resolve()
        target = (root / doc_id).resolve()
        if not target.is_relative_to(root) or target == root:
            return JSONResponse(
                {"error": f"no document with id {doc_id!r} in the corpus folder"}, status_code=404
            )
        if not target.is_file():
            indexed = holder.ready and doc_id in holder.current.version.documents
            message = (
                f"document {doc_id!r} is not a file of the corpus folder (it may come from a .jsonl "
                "file that holds other documents too: edit that file and upload it)"
                if indexed
                else f"no document with id {doc_id!r}"
            )
            return JSONResponse({"error": message}, status_code=409 if indexed else 404)
        target.unlink()
        job = jobs.submit("delete", [doc_id])
        log.info("documents.deleted", extra={"job_id": job.job_id, "doc_id": doc_id})
        return JobAccepted(job_id=job.job_id, files=[doc_id])

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobStatus,
        responses={**WRITE_ERRORS, 404: {"model": ErrorResponse}},
        dependencies=[Depends(write_access)],
    )
    async def job_status(job_id: str) -> JobStatus | JSONResponse:
        """An index job: queued, running, done (with the indexer's report) or failed (with why)."""
        job = jobs.jobs.get(job_id)
        if job is None:
            return JSONResponse({"error": f"no job with id {job_id!r}"}, status_code=404)
        return JobStatus(**vars(job))

    # --- operations ----------------------------------------------------------------------

    @app.get("/healthz", dependencies=[Depends(public)])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}}, dependencies=[Depends(public)])
    async def readyz() -> Any:
        if not holder.ready:
            return JSONResponse(
                {"error": f"not ready: {holder.last_error or 'no index loaded'}"}, status_code=503
            )
        return {"status": "ready", "index_version": holder.current.version_id}

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(public)])
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

    @app.get("/", response_class=HTMLResponse, include_in_schema=False, dependencies=[Depends(public)])
    async def chat_page() -> HTMLResponse:
        """The chat page. Its policy lets it load only this app's own script and style and talk only
        to this app, so even text that slipped into the page as HTML could not run or call out."""
        return HTMLResponse(page, headers=PAGE_HEADERS)

    route_access(app)  # refuses to build an app with a route that is neither keyed nor public
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
