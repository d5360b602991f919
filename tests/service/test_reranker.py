"""The optional cross-encoder stage (RAGQA_RERANKER = a local model folder), end to end.

A test double, and why: no cross-encoder model exists offline here, so the test builds a tiny BERT
cross-encoder with random weights at test time (2 layers, hidden size 32, the bundled model's own
tokenizer). Its scores mean nothing, which is the point: an order that no retriever would produce can
only come from the reranker, and it is checked against `CrossEncoder(folder).predict` run here on the
same (query, passage text) pairs. Everything else is real: the app in process with its real lifespan
(which loads the reranker named by RAGQA_RERANKER), the session's store, the bundled model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.config import ServiceSettings
from tests.service.conftest import save_tiny_bert, serving

pytestmark = pytest.mark.unit

QUERY = "Why did Armenia freeze CSTO membership?"


@pytest.fixture(scope="module")
def reranker_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertForSequenceClassification

    return save_tiny_bert(
        tmp_path_factory.mktemp("tiny-cross-encoder"),
        BertForSequenceClassification,
        id2label={0: "LABEL_0"},  # one label: a cross-encoder's single relevance score
    )


@pytest.fixture(scope="module")
def cross_encoder(reranker_folder: Path) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(reranker_folder), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def reranking(store: Path, reranker_folder: Path) -> Iterator[TestClient]:
    """A second app over the session's store, with the tiny cross-encoder as its reranker."""
    with serving(ServiceSettings(store=store, reranker=str(reranker_folder))) as client:
        yield client


def test_tiny_cross_encoder_loads(cross_encoder: Any) -> None:
    scores = cross_encoder.predict([(QUERY, "Armenia froze its membership."), (QUERY, "Bees make honey.")])
    assert len(scores) == 2 and all(0.0 <= float(s) <= 1.0 for s in scores)


def test_reranker_orders_the_fused_candidates(
    api: TestClient, reranking: TestClient, cross_encoder: Any
) -> None:
    # Without a reranker (the session's app), the fused candidates and their fused scores. The store is
    # small enough that the candidates are every chunk, all of which the reranker scores (depth 20).
    fused = api.post("/v1/search", json={"query": QUERY, "top_k": 10}).json()["results"]
    chunks = sum(d["chunks"] for d in api.get("/v1/documents").json()["documents"])
    assert len(fused) == chunks <= 10

    response = reranking.post("/v1/search", json={"query": QUERY, "top_k": 10})
    assert response.status_code == 200, response.text
    reranked = response.json()["results"]
    assert reranked, "the reranking app returns results"
    assert {r["chunk_id"] for r in reranked} == {f["chunk_id"] for f in fused}
    for passage in reranked:
        assert passage["dense_rank"] is not None or passage["bm25_rank"] is not None, "fusion ranks are kept"

    predicted = [float(s) for s in cross_encoder.predict([(QUERY, f["text"]) for f in fused])]
    by_chunk = {f["chunk_id"]: score for f, score in zip(fused, predicted, strict=True)}
    ordered = sorted(predicted, reverse=True)
    assert min(a - b for a, b in zip(ordered, ordered[1:], strict=False)) > 1e-4, "a clear order to check"

    expected = sorted(by_chunk, key=lambda chunk: -by_chunk[chunk])
    assert [r["chunk_id"] for r in reranked] == expected
    for passage in reranked:
        assert passage["score"] == pytest.approx(by_chunk[passage["chunk_id"]], abs=1e-5)
    fused_scores = {f["chunk_id"]: f["score"] for f in fused}
    from_reranker = all(abs(r["score"] - fused_scores[r["chunk_id"]]) > 1e-3 for r in reranked)
    assert from_reranker, "the scores come from the reranker"

    ask = reranking.post("/v1/ask", json={"question": QUERY})
    assert ask.status_code == 200, ask.text
    assert [p["chunk_id"] for p in ask.json()["passages"]] == expected[:5]
