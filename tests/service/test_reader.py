"""The optional reader (RAGQA_READER = a local folder of an extractive question-answering model).

A test double, and why: no extractive-QA model exists offline here, so the tests build a tiny BERT
question-answering model with random weights at test time (conftest's `save_tiny_bert`). The spans
it points at mean nothing, which is the point: a sentence that no similarity would choose can only be
in the answer because the reader pointed at it, and the span is checked against `Reader.read` run
here on the same passages. Everything else is real: the span search, the app in process with its real
lifespan (which loads the reader named by RAGQA_READER), the session's store, the bundled model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.answering import AnswerPolicy, answer, score_sentences
from service.config import ServiceSettings
from service.reader import MAX_ANSWER_TOKENS, Reader, best_span
from service.retrieval import Hit
from tests.service.conftest import save_tiny_bert, serving

if TYPE_CHECKING:
    from indexer.embedding import Embedder
    from service.index import LoadedIndex

pytestmark = pytest.mark.unit

QUESTION = "Why did Armenia freeze CSTO membership?"
POLICY = AnswerPolicy(most_sentences=2, abstain_below=0.5, margin=0.09)


@pytest.fixture(scope="module")
def reader_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertForQuestionAnswering

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-reader"), BertForQuestionAnswering)


@pytest.fixture(scope="module")
def reader(reader_folder: Path) -> Reader:
    return Reader(str(reader_folder))


def test_best_span_keeps_to_the_passage_order_and_length() -> None:
    starts = np.array([9.0, 0.0, 1.0, 0.0, 5.0, 0.0])
    ends = np.array([9.0, 3.0, 0.0, 0.0, 0.0, 2.0])
    allowed = np.array([False, True, True, True, True, True])  # token 0 is the question's
    assert best_span(starts, ends, allowed) == (4, 5, 7.0)
    # an end before its start never counts: the best end (1) lies before the best start (4)
    assert best_span(starts, np.array([0.0, 8.0, 0.0, 0.0, 0.0, 0.0]), allowed) == (1, 1, 8.0)
    assert best_span(starts, ends, np.zeros(6, dtype=bool)) is None
    # the best end lies too far after the only good start: the longest span allowed wins
    s, e = np.full(MAX_ANSWER_TOKENS + 5, -10.0), np.zeros(MAX_ANSWER_TOKENS + 5)
    s[0], e[-1], e[MAX_ANSWER_TOKENS - 1] = 5.0, 9.0, 1.0
    assert best_span(s, e, np.ones(len(s), dtype=bool)) == (0, MAX_ANSWER_TOKENS - 1, 6.0)


def test_read_points_inside_a_passage(reader: Reader) -> None:
    passages = ["Armenia froze its membership of the CSTO in 2024.", "Bees make honey from nectar."]
    span = reader.read(QUESTION, passages)
    assert span is not None and span.passage in (0, 1)
    text = passages[span.passage]
    assert 0 <= span.start < span.end <= len(text)
    assert text[span.start : span.end].strip(), "a span of the passage's own characters"
    assert reader.read(QUESTION, []) is None


def test_the_pointed_sentence_is_the_best_one(small_index: LoadedIndex, embedder: Embedder) -> None:
    """The sentence holding the reader's span answers, even the worst scoring one; abstention still
    follows the similarity scores."""
    question = "Who tended the lamp of the lighthouse every night?"
    vector = embedder.encode_short([question])[0]
    hits = [Hit(c.chunk_id, 1.0) for c in small_index.chunk_records() if c.doc_id == "lighthouse.md"]
    sentences = score_sentences(small_index, vector, question, hits, small_index.idf)
    plain = answer(small_index, vector, question, hits, POLICY)
    document = small_index.document("lighthouse.md").text
    worst = next(s for s in reversed(sentences) if document[s.start : s.end] not in plain.text)
    pointed = answer(small_index, vector, question, hits, POLICY, (worst.doc_id, worst.start + 1))
    text = document[worst.start : worst.end]
    assert text not in plain.text and text in pointed.text
    assert any(c.start <= worst.start < c.end for c in pointed.citations)
    assert pointed.best_score == plain.best_score
    strict = replace(POLICY, abstain_below=plain.best_score + 0.01)
    assert answer(small_index, vector, question, hits, strict, (worst.doc_id, worst.start)).abstained


@pytest.fixture(scope="module")
def reading(store: Path, reader_folder: Path) -> Iterator[TestClient]:
    """A second app over the session's store, with the tiny reader."""
    with serving(ServiceSettings(store=store, reader=str(reader_folder))) as client:
        yield client


def test_the_service_answers_with_the_sentence_the_reader_points_at(
    reading: TestClient, reader: Reader
) -> None:
    settings = ServiceSettings()
    response = reading.post("/v1/ask", json={"question": QUESTION, "top_k": settings.answer_passages})
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body["abstained"] and "read" in body["timings_ms"]
    passages = body["passages"]
    span = reader.read(QUESTION, [p["text"] for p in passages])
    assert span is not None
    where = passages[span.passage]
    offset = where["start"] + span.start
    cited = [
        c for c in body["citations"] if c["doc_id"] == where["doc_id"] and c["start"] <= offset < c["end"]
    ]
    assert cited, (offset, body["citations"])
    for c in body["citations"]:
        document = reading.get("/v1/documents/" + quote(c["doc_id"], safe="")).json()["text"]
        assert document[c["start"] : c["end"]] == c["excerpt"]
