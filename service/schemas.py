"""Request and response models of the v1 HTTP API (described in the README and docs/architecture.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from indexer.filters import ChunkFilter

MAX_QUESTION_CHARS = 2000
MAX_TOP_K = 50
MAX_FILTER_VALUES = 1000  # document ids, and values of one metadata field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain more than white space")
    return value


MetadataScalar = StrictStr | StrictInt | StrictFloat | StrictBool | None
MetadataValues = Annotated[list[MetadataScalar], Field(min_length=1, max_length=MAX_FILTER_VALUES)]


class SearchFilter(Strict):
    """Restricts retrieval to the chunks of the documents that meet every condition given (AND). The
    filter is applied inside retrieval, before ranking: the best passages among those allowed come back
    (never fewer because better ones elsewhere were left out); a filter that matches nothing gives no
    passages (and /v1/ask abstains)."""

    doc_ids: list[StrictStr] | None = Field(
        None,
        min_length=1,
        max_length=MAX_FILTER_VALUES,
        description="only these documents (their `doc_id`s; an id no document has matches nothing)",
    )
    source_prefix: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="only documents whose `source` starts with this string (case-sensitive)",
    )
    metadata: dict[str, MetadataScalar | MetadataValues] | None = Field(
        None,
        min_length=1,
        description="only documents whose metadata field equals the value given, or one of the values "
        "of a list (one-of); values are JSON scalars, compared as JSON (1 matches 1.0, not true). A "
        "document's field that holds a list matches when one of its elements does; a document without "
        "the field does not match",
        examples=[{"lang": "en", "year": [2023, 2024]}],
    )

    @field_validator("metadata", mode="before")
    @classmethod
    def _scalars_only(cls, value: Any) -> Any:
        """One readable message per bad field, before the typed check lists every scalar type it is not."""
        if not isinstance(value, dict):
            return value
        for name, given in value.items():
            values = given if isinstance(given, list) else [given]
            if isinstance(given, list) and not given:
                raise ValueError(f"field {name!r}: an empty list of values (give at least one)")
            if isinstance(given, list) and len(given) > MAX_FILTER_VALUES:
                raise ValueError(f"field {name!r}: more than {MAX_FILTER_VALUES} values")
            for v in values:
                if isinstance(v, dict | list):
                    raise ValueError(
                        f"field {name!r}: values must be JSON scalars (string, number, boolean, null) "
                        "or a list of them"
                    )
        return value

    def to_chunk_filter(self) -> ChunkFilter:
        metadata = {
            name: tuple(given) if isinstance(given, list) else (given,)
            for name, given in (self.metadata or {}).items()
        }
        return ChunkFilter(
            doc_ids=tuple(self.doc_ids) if self.doc_ids is not None else None,
            source_prefix=self.source_prefix,
            metadata=metadata,
        )


FILTER_DESCRIPTION = "restrict retrieval to some documents (see SearchFilter); null or {}: every document"


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
    filter: SearchFilter | None = Field(None, description=FILTER_DESCRIPTION)

    _question_not_blank = field_validator("question")(not_blank)


class SearchRequest(Strict):
    query: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, strict=True)
    filter: SearchFilter | None = Field(None, description=FILTER_DESCRIPTION)

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
    documents: list[DocumentSummary] = Field(description="this page of the documents, in the store's order")
    total: int = Field(description="how many documents the index holds")
    offset: int = Field(description="the position of this page's first document")
    limit: int = Field(description="the most documents a page holds")


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
    error: str | None = Field(
        None,
        description="why it failed (a job cut short by the service stopping says so; its change stays in "
        "the corpus folder, for the next job or ragqa-index)",
    )
