"""Answers and search (read access): POST /v1/ask, whole or streamed as server-sent events, and
POST /v1/search."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, format_sse_event

from service.access import read_access
from service.deps import MetricsDep, QADep
from service.errors import READ_ERRORS
from service.metrics import Metrics
from service.qa import final_answer, passages_of
from service.schemas import AskRequest, AskResponse, SearchRequest, SearchResponse

log = logging.getLogger("ragqa.service")
router = APIRouter(dependencies=[Depends(read_access)])

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


@router.post(
    "/v1/ask",
    response_model=AskResponse,
    responses={**READ_ERRORS, 200: {"content": {"text/event-stream": {"schema": STREAM_SCHEMA}}}},
)
async def ask(body: AskRequest, request: Request, qa: QADep, metrics: MetricsDep) -> Response | AskResponse:
    """Answer a question from the documents, citing exact spans. `"stream": true` (or
    `Accept: text/event-stream`) streams server-sent events: passages, delta, citation, done. A
    `filter` restricts retrieval (and so the answer) to some documents; one that matches nothing
    abstains."""
    events = qa.answer_events(body)
    # Retrieval happens before the first event: its errors (503 while no index is loaded) are
    # still HTTP errors here, not a stream that breaks off.
    first = await anext(events)
    if body.stream or "text/event-stream" in request.headers.get("accept", ""):
        return EventSourceResponse(_sse(first, events, metrics))
    answer = await final_answer(events)
    metrics.observe_answer(answer)
    return answer


@router.post("/v1/search", response_model=SearchResponse, responses=READ_ERRORS)
async def search(body: SearchRequest, qa: QADep, metrics: MetricsDep) -> SearchResponse:
    """The passages that best match a query: dense and BM25 fused, both ranks on each. A `filter`
    restricts the search to some documents (inside retrieval: the best passages among them)."""
    chunk_filter = body.filter.to_chunk_filter() if body.filter is not None else None
    result = await qa.search(body.query, body.top_k, chunk_filter=chunk_filter)
    metrics.observe_stages(result.timings_ms)
    return SearchResponse(
        results=passages_of(result.index, result.hits), index_version=result.index.version_id
    )


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
