"""Request and response models of the v1 HTTP API (described in the README and docs/architecture.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_QUESTION_CHARS = 2000
MAX_TOP_K = 50


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain more than white space")
    return value


class Turn(Strict):
    """One earlier exchange of the conversation."""

    role: Literal["user", "assistant"]
    content: str = Field(max_length=8000)


class AskRequest(Strict):
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, strict=True, description="passages to retrieve")
    history: list[Turn] = Field(default_factory=list, max_length=20)
    stream: bool = False
    mode: Literal["extractive", "generative"] | None = Field(
        None, description="default: generative when the service has an LLM (RAGQA_LLM_URL), else extractive"
    )

    _question_not_blank = field_validator("question")(not_blank)


class SearchRequest(Strict):
    query: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, strict=True)

    _query_not_blank = field_validator("query")(not_blank)


class Passage(BaseModel):
    chunk_id: int
    doc_id: str
    title: str
    source: str
    text: str
    start: int
    end: int
    score: float
    dense_rank: int | None = Field(None, description="rank in the dense (FAISS) list, 1-based")
    bm25_rank: int | None = Field(None, description="rank in the BM25 list, 1-based")


class Citation(BaseModel):
    n: int
    doc_id: str
    title: str
    source: str
    excerpt: str
    start: int
    end: int
    score: float


class UnsupportedSentence(BaseModel):
    """A sentence the LLM wrote that no source it cited supports: left out of the answer."""

    text: str
    cited: list[int] = Field(description="the source numbers the LLM gave it")
    score: float = Field(description="its best support score (the threshold is RAGQA_SUPPORT_THRESHOLD)")
    names_not_in_source: list[str] = Field(
        default_factory=list, description="names and numbers that its best source never mentions"
    )


class AskResponse(BaseModel):
    question: str
    answer: str
    abstained: bool
    mode: Literal["extractive", "generative"] = Field(
        "extractive", description="how the answer was made (extractive also when a generative one fell back)"
    )
    fallback_reason: str | None = Field(
        None, description="why the LLM's answer was not used, or was cut short; null when it was used in full"
    )
    unsupported: list[UnsupportedSentence] = Field(
        default_factory=list, description="generated sentences left out: no cited source supports them"
    )
    confidence: float | None = Field(
        None, description="score of the best answering sentence; the service abstains below its threshold"
    )
    citations: list[Citation]
    passages: list[Passage]
    index_version: str
    timings_ms: dict[str, float]


class SearchResponse(BaseModel):
    results: list[Passage]
    index_version: str


class DocumentSummary(BaseModel):
    doc_id: str
    title: str
    source: str
    chunks: int


class DocumentList(BaseModel):
    documents: list[DocumentSummary]


class DocumentDetail(BaseModel):
    doc_id: str
    title: str
    source: str
    text: str
    metadata: dict[str, object]


class ErrorResponse(BaseModel):
    error: str
    detail: list[dict[str, object]] | None = None


class JobAccepted(BaseModel):
    job_id: str
    files: list[str] = Field(description="the files written to (or removed from) the corpus folder")


class JobStatus(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    action: Literal["upload", "delete"]
    files: list[str]
    created: float
    started: float | None = None
    finished: float | None = None
    report: dict[str, object] | None = Field(None, description="the indexer's report once done")
    error: str | None = None
