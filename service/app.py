"""`create_app(settings)` assembles the HTTP API (v1): middleware, error handlers, the routers of
service/routes/, the chat page's static files, and the check that every route declares who may call
it. Its lifespan builds the runtime (service/runtime.py) and keeps it on `app.state.runtime`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.access import route_access
from service.config import ServiceSettings
from service.docs import add_docs
from service.errors import add_error_handlers
from service.metrics import Metrics
from service.middleware import MAX_BODY_BYTES, BodyLimitMiddleware, MetricsMiddleware, RequestIdMiddleware
from service.routes import answers, chat, documents, jobs, operations, page
from service.runtime import Runtime


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    runtime = Runtime.load(app.state.settings, app.state.metrics)
    runtime.start()
    app.state.runtime = runtime
    try:
        yield
    finally:
        await runtime.close()


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    app = FastAPI(
        title="ragqa",
        version="1",
        summary="Questions answered from your documents, with citations pinned to exact spans.",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load from a CDN: service/docs.py serves them offline
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics = Metrics()
    # Not FastAPI's max_body_size: its limiter answers a too-large Content-Length with plain text,
    # replacing any JSON response from inside. This one answers 413 in JSON like every other error.
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY_BYTES, uploads=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # counts 413s too
    app.add_middleware(RequestIdMiddleware)  # outermost: every line logged for a request has its id
    add_error_handlers(app)

    app.include_router(answers.router)
    app.include_router(chat.router)
    app.include_router(documents.read_router)
    app.include_router(documents.write_router)
    app.include_router(jobs.router)
    app.include_router(operations.router)
    app.mount("/static", StaticFiles(directory=str(page.STATIC)), name="static")
    app.include_router(page.router)

    add_docs(app)  # GET /docs (Swagger UI) and /redoc (ReDoc), with their assets

    route_access(app)  # refuses to build an app with a route that is neither keyed nor public
    return app
