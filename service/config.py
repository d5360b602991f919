"""Service settings: the indexer's (store, model) plus serving, retrieval and answering knobs.

Every setting is an environment variable with the RAGQA_ prefix and a default that works offline."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from indexer.config import IndexSettings


class ServiceSettings(IndexSettings):
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=1, le=65535)
    reload_interval: float = Field(1.0, gt=0, description="seconds between checks for a new index version")

    # retrieval (the defaults are tuned on SQuAD 2.0 and NQ-open: docs/retrieval.md)
    candidates: int = Field(10, ge=1, le=1000, description="hits taken from each retriever before fusion")
    fusion: Literal["score", "rrf"] = Field("score", description="how the dense and BM25 lists are fused")
    sentence_weight: float = Field(0.5, ge=0, le=1, description="score fusion: weight of the best sentence")
    bm25_weight: float = Field(0.1, ge=0, description="score fusion: weight of the normalised BM25 score")
    rrf_k: int = Field(60, ge=1, description="rrf fusion: the constant k")
    dense_weight: float = Field(1.0, ge=0, description="rrf fusion: weight of the dense list")
    rrf_bm25_weight: float = Field(1.0, ge=0, description="rrf fusion: weight of the BM25 list")
    reranker: str | None = Field(None, description="local folder of a cross-encoder that reorders the hits")
    rerank_depth: int = Field(20, ge=1, le=200, description="fused hits the cross-encoder scores")

    # answering
    answer_passages: int = Field(5, ge=1, le=50, description="top passages whose sentences may answer")
    answer_sentences: int = Field(2, ge=1, le=10, description="most sentences in an extractive answer")
    answer_margin: float = Field(0.09, ge=0, description="other sentences within this of the best join it")
    abstain_below: float = Field(0.5, description="best sentence score below which the service abstains")
    reader: str | None = Field(
        None,
        description="local folder of an extractive question-answering model that picks the answer sentence",
    )

    # serving
    max_batch: int = Field(32, ge=1, le=256, description="questions encoded together by one model call")
    question_encoder: Literal["onnx", "torch"] = Field(
        "onnx",
        description="what encodes questions: the model on ONNX Runtime (checked against PyTorch) or PyTorch",
    )
    onnx_cache: Path | None = Field(
        None, description="where the model's ONNX export is kept (default ~/.cache/ragqa/onnx)"
    )

    # the write API (POST/DELETE /v1/documents, /v1/jobs) and keys
    corpus: Path = Field(Path("corpus"), description="folder that uploads go to and index jobs read")
    api_keys: SecretStr | None = Field(None, description="comma-separated keys; unset: the write API is off")
    read_requires_key: bool = Field(False, description="reads (ask, search, documents) need a key too")
    max_upload_mb: float = Field(50.0, gt=0, description="largest upload (all files of one request)")

    @property
    def api_key_list(self) -> list[str]:
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        return [key.strip() for key in raw.split(",") if key.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    # generative answers (docs/generative.md): any OpenAI-compatible server
    llm_url: str | None = Field(
        None,
        description="base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8080/v1 (unset: no LLM)",
    )
    llm_model: str = Field("default", description="model name sent to the LLM server")
    llm_api_key: SecretStr | None = Field(None, description="sent as `Authorization: Bearer KEY`")
    llm_timeout: float = Field(30.0, gt=0, description="seconds the LLM may take for a whole answer")
    llm_max_tokens: int = Field(256, ge=16, le=4096, description="longest answer the LLM may write")
    llm_passages: int = Field(3, ge=1, le=20, description="top passages given to the LLM as sources")
    support_threshold: float = Field(
        0.7, description="score a generated sentence needs against a cited source sentence to be kept"
    )
