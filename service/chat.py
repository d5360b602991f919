"""The OpenAI chat-completions API over ragqa's answers: request and response models, the models
ragqa offers, and how a conversation becomes an ask (POST /v1/chat/completions, GET /v1/models;
service/routes/chat.py).

The official `openai` SDK, LangChain's and LlamaIndex's OpenAI clients, Open WebUI and LibreChat talk
to it as to OpenAI. What differs, documented in the README:

- `model` chooses ragqa's answer mode: MODEL_EXTRACTIVE (sentences quoted from the documents), and
  MODEL_GENERATIVE when an LLM is configured (RAGQA_LLM_URL: written by it, every sentence checked
  against its sources).
- The last message is the question; it must be the user's. Earlier user and assistant messages are
  the conversation's history (the last MAX_HISTORY of them), as in /v1/ask. System and developer
  messages are accepted and not used: ragqa's answers follow its own grounding rules.
- The answer keeps its `[n]` markers; the citations (exact spans, document ids, titles) travel in the
  extension field `ragqa` of the completion (of the last chunk when streamed), which standard clients
  ignore. An abstention is an ordinary assistant message that says the documents do not answer.
- `temperature`, `top_p`, `max_tokens` / `max_completion_tokens`, `stop`, `seed`, `user` and the
  penalties are accepted and have no effect: an extractive answer quotes the documents; a generative
  one is written at temperature 0 with at most RAGQA_LLM_MAX_TOKENS tokens. `n` must be 1; tools,
  functions and non-text content parts are refused.
- `usage` counts tokens with the embedding model's tokenizer: the prompt is the question and the
  history ragqa read, the completion the answer's text (an extractive answer costs no LLM tokens at
  all; a generative one's LLM prompt also holds the passages, which are not counted here).
- Errors have OpenAI's shape: {"error": {"message", "type", "param", "code"}} (service/errors.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

from service.schemas import MAX_QUESTION_CHARS, AskRequest, AskResponse, Citation, Turn

MODEL_EXTRACTIVE = "ragqa-extractive"
MODEL_GENERATIVE = "ragqa-generative"
MAX_MESSAGES = 100
MAX_HISTORY = 20  # earlier user and assistant messages used, the most recent (AskRequest's limit)
MAX_TURN_CHARS = 8000  # an earlier message's text used (AskRequest's Turn limit): longer ones are cut
CREATED = int(time.time())  # when the models were "created": this process's start


class TextPart(BaseModel):
    """A content part; only text parts are supported."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # `name`, `refusal`, ...: accepted, not used

    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions request, as far as ragqa answers it (module docstring). Other fields
    OpenAI defines are accepted and ignored; those that would change the answer's form are refused."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(
        description=f"{MODEL_EXTRACTIVE}, or {MODEL_GENERATIVE} when an LLM is configured"
    )
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, description="must be 1 (or absent)")
    max_tokens: int | None = Field(None, ge=1, description="accepted, no effect (see the README)")
    max_completion_tokens: int | None = Field(None, ge=1, description="accepted, no effect")
    temperature: float | None = Field(None, ge=0, le=2, description="accepted, no effect")
    top_p: float | None = Field(None, ge=0, le=1, description="accepted, no effect")
    tools: list[Any] | None = Field(None, description="not supported: must be absent or empty")
    functions: list[Any] | None = Field(None, description="not supported: must be absent or empty")

    @field_validator("n")
    @classmethod
    def _one(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("ragqa gives one answer: n must be 1")
        return value

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise ValueError("tools and functions are not supported: ragqa answers from its documents")
        return value

    @field_validator("messages")
    @classmethod
    def _a_question_last(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        last = messages[-1]
        if last.role != "user":
            raise ValueError(f"the last message must be the user's question, not a {last.role} message")
        question = last.text()
        if not question.strip():
            raise ValueError("the last message, the question, is empty")
        if len(question) > MAX_QUESTION_CHARS:
            raise ValueError(f"the question is longer than {MAX_QUESTION_CHARS} characters")
        return messages

    def ask(self, mode: Literal["extractive", "generative"]) -> AskRequest:
        """The /v1/ask request of this conversation: its last message the question, the user and
        assistant messages before it the history (the last MAX_HISTORY, each cut to MAX_TURN_CHARS)."""
        earlier = [
            Turn(role=m.role, content=m.text()[:MAX_TURN_CHARS])
            for m in self.messages[:-1]
            if m.role in ("user", "assistant") and m.text().strip()
        ]
        return AskRequest(question=self.messages[-1].text(), history=earlier[-MAX_HISTORY:], mode=mode)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = CREATED
    owned_by: str = "ragqa"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class RagqaExtension(BaseModel):
    """ragqa's extension field of a completion: what standard clients ignore and a reader checks."""

    citations: list[Citation] = Field(description="the sources of the answer's [n] markers, exact spans")
    abstained: bool = Field(description="the documents do not answer: the message says so")
    mode: Literal["extractive", "generative"]
    fallback_reason: str | None = None
    index_version: str


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = Field(None, description="the index version that answered")
    ragqa: RagqaExtension


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def extension(response: AskResponse) -> RagqaExtension:
    return RagqaExtension(
        citations=response.citations,
        abstained=response.abstained,
        mode=response.mode,
        fallback_reason=response.fallback_reason,
        index_version=response.index_version,
    )


def chunk(
    completion: str,
    created: int,
    model: str,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One chat.completion.chunk event's data."""
    return {
        "id": completion,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        **extra,
    }
