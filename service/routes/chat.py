"""The OpenAI-compatible API (read access): GET /v1/models, GET /v1/models/{id} and
POST /v1/chat/completions, whole or streamed as chat.completion.chunk events ending with [DONE].
What the fields mean here: service/chat.py."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, StreamingResponse

from service.access import read_access
from service.chat import (
    MODEL_EXTRACTIVE,
    MODEL_GENERATIVE,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelCard,
    ModelList,
    Usage,
    chunk,
    completion_id,
    extension,
)
from service.config import ServiceSettings
from service.deps import MetricsDep, QADep, SettingsDep
from service.errors import OPENAI_ERRORS, openai_error
from service.metrics import Metrics
from service.qa import QAService, final_answer
from service.schemas import AskRequest

log = logging.getLogger("ragqa.service")
router = APIRouter(dependencies=[Depends(read_access)])

STREAM_SCHEMA = {
    "type": "string",
    "description": (
        "with `stream: true`, server-sent events: `data: {chat.completion.chunk}` lines, the last chunk "
        "with finish_reason `stop` and the `ragqa` extension (citations), a usage chunk when "
        "stream_options.include_usage, then `data: [DONE]`"
    ),
}


def offered(settings: ServiceSettings) -> list[str]:
    """The model ids this service answers to: the extractive mode, and the generative one with an LLM."""
    return [MODEL_EXTRACTIVE] + ([MODEL_GENERATIVE] if settings.llm_url else [])


def unknown_model(model: str, settings: ServiceSettings) -> JSONResponse:
    return openai_error(
        404,
        f"The model {model!r} does not exist here; this service offers {', '.join(offered(settings))}",
        param="model",
        code="model_not_found",
    )


@router.get("/v1/models", response_model=ModelList, responses=OPENAI_ERRORS)
async def models(settings: SettingsDep) -> ModelList:
    """ragqa's answer modes as OpenAI model ids."""
    return ModelList(data=[ModelCard(id=model) for model in offered(settings)])


@router.get(
    "/v1/models/{model_id}",
    response_model=ModelCard,
    responses={**OPENAI_ERRORS, 404: OPENAI_ERRORS[400] | {"description": "no such model"}},
)
async def model(model_id: str, settings: SettingsDep) -> ModelCard | JSONResponse:
    if model_id not in offered(settings):
        return unknown_model(model_id, settings)
    return ModelCard(id=model_id)


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        **OPENAI_ERRORS,
        404: OPENAI_ERRORS[400] | {"description": "no such model"},
        200: {"content": {"text/event-stream": {"schema": STREAM_SCHEMA}}},
    },
)
async def chat_completions(
    body: ChatCompletionRequest, qa: QADep, settings: SettingsDep, metrics: MetricsDep
) -> ChatCompletion | JSONResponse | StreamingResponse:
    """An answer from the documents in OpenAI's chat-completions form (service/chat.py says what each
    field does here). The answer keeps its [n] markers; `ragqa.citations` holds their exact spans."""
    if body.model not in offered(settings):
        return unknown_model(body.model, settings)
    ask = body.ask("generative" if body.model == MODEL_GENERATIVE else "extractive")
    events = qa.answer_events(ask)
    await anext(events)  # the passages: retrieval's errors (503) are still HTTP errors here
    created, name = int(time.time()), completion_id()
    if body.stream:
        usage = body.stream_options is not None and body.stream_options.include_usage
        stream = _chunks(events, qa, ask, name, created, body.model, usage, metrics)
        headers = {"Cache-Control": "no-cache"}
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)
    answer = await final_answer(events)
    metrics.observe_answer(answer)
    return ChatCompletion(
        id=name,
        created=created,
        model=body.model,
        choices=[Choice(message=AssistantMessage(content=answer.answer))],
        usage=_usage(qa, ask, answer.answer),
        system_fingerprint=answer.index_version,
        ragqa=extension(answer),
    )


def _usage(qa: QAService, ask: AskRequest, answer: str) -> Usage:
    """Tokens by the embedding model's tokenizer: the question and history read, the answer written."""
    prompt = qa.count_tokens(ask.question) + sum(qa.count_tokens(turn.content) for turn in ask.history)
    completion = qa.count_tokens(answer)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def _chunks(
    events: AsyncIterator[tuple[str, Any]],
    qa: QAService,
    ask: AskRequest,
    name: str,
    created: int,
    model: str,
    usage: bool,
    metrics: Metrics,
) -> AsyncIterator[bytes]:
    """The answer as chat.completion.chunk events: the role, the answer's text in its deltas, a last
    chunk with finish_reason "stop" and the `ragqa` extension, the usage chunk when asked for, then
    [DONE]. A failure after the stream began is an error event (OpenAI's shape), then [DONE]."""

    def event(data: Any) -> bytes:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    yield event(chunk(name, created, model, {"role": "assistant", "content": ""}))
    try:
        async for kind, data in events:
            if kind == "delta":
                yield event(chunk(name, created, model, {"content": data}))
            elif kind == "done":
                metrics.observe_answer(data)
                last = chunk(name, created, model, {}, "stop", ragqa=extension(data).model_dump())
                yield event({**last, "system_fingerprint": data.index_version})
                if usage:
                    counted = _usage(qa, ask, data.answer).model_dump()
                    yield event({**chunk(name, created, model, {}), "choices": [], "usage": counted})
    except Exception:
        log.exception("chat.stream_failed")
        message = "the service failed while answering; the answer is incomplete"
        yield event({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
    yield b"data: [DONE]\n\n"
