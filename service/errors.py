"""Errors as JSON with a message a person can read: the exception handlers, registered on an app by
`add_error_handlers`, and the error responses the routes document in OpenAPI.

Two shapes. The ragqa API answers {"error": "message"} (422 for invalid input). The OpenAI-compatible
routes (OPENAI_PATHS: service/routes/chat.py) answer OpenAI's {"error": {"message", "type", "param",
"code"}} (400 for invalid input), which the OpenAI clients parse."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.store import StoreUnavailableError
from service import writes
from service.chat import OpenAIError
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


OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIError, "description": "invalid request (OpenAI's invalid_request_error)"},
    401: {"model": OpenAIError, "description": "no valid API key (when reads require one)"},
    403: {"model": OpenAIError, "description": "reads require a key and no keys are configured"},
    413: {"model": OpenAIError, "description": "request body too large"},
    503: {"model": OpenAIError, "description": "no index loaded yet, or the store does not answer"},
}
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error"}
OPENAI_CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 503: "not_ready"}


def openai_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in OPENAI_PATHS)


def openai_error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An error in OpenAI's shape; its type follows the status (invalid_request_error for a 4xx,
    server_error for a 5xx, as OpenAI's clients expect)."""
    kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"message": message, "type": kind, "param": param, "code": code or OPENAI_CODES.get(status)}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def error_response(
    path: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error in the shape the route at `path` answers in."""
    if openai_path(path):
        return openai_error(status, message, headers=headers)
    return JSONResponse({"error": message}, status_code=status, headers=headers)


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
    if openai_path(request.url.path):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return openai_error(400, "invalid request: " + "; ".join(problems), param=param)
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
    return error_response(request.url.path, 503, f"not ready: {exc}")


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return error_response(request.url.path, exc.status_code, message, exc.headers)
