"""Errors as JSON with a message a person can read: the exception handlers, registered on an app by
`add_error_handlers`, and the error responses the routes document in OpenAPI."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.store import StoreUnavailableError
from service import writes
from service.holder import NotReadyError
from service.schemas import ErrorResponse

# The error responses the routes document (`responses=`), beside their own.
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "invalid input"},
    503: {"model": ErrorResponse, "description": "no index loaded yet, or the store does not answer"},
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "no valid API key"},
    403: {"model": ErrorResponse, "description": "the write API is disabled (no keys configured)"},
}


def add_error_handlers(app: FastAPI) -> None:
    app.exception_handler(RequestValidationError)(invalid)
    app.exception_handler(writes.UploadError)(bad_upload)
    app.exception_handler(NotReadyError)(not_ready)
    app.exception_handler(StoreUnavailableError)(not_ready)
    app.exception_handler(StarletteHTTPException)(http_error)


async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 that names each field and what is wrong with it, and where JSON that does not parse breaks."""
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


async def bad_upload(request: Request, exc: writes.UploadError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)


async def not_ready(request: Request, exc: Exception) -> JSONResponse:
    """503: no index loaded yet (NotReadyError), or the store's engine failed during the request
    (StoreUnavailableError: a Milvus server down, unreachable or too slow)."""
    return JSONResponse({"error": f"not ready: {exc}"}, status_code=503)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)
