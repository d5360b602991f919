"""Question answering over the live index: encode → retrieve → answer, with timings.

Follow-ups: the dense query is the mean of the question's vector and the vector of the previous user
question, and BM25 reads both questions, so "And what about Georgia?" keeps the conversation's
topic while its own words lead; answer sentences are scored against the blended vector and the
words of the question itself."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from service import answering
from service.config import ServiceSettings
from service.encoder import BatchingEncoder
from service.holder import IndexHolder
from service.index import LoadedIndex
from service.retrieval import Hit, Retriever
from service.schemas import Citation, Passage, Turn

HISTORY_WEIGHT = 1.0


@dataclass
class SearchResult:
    index: LoadedIndex
    hits: list[Hit]
    timings_ms: dict[str, float]
    vector: np.ndarray  # the query vector retrieval used (history blended in)


@dataclass
class AskResult(SearchResult):
    answer: answering.Answer


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


class QAService:
    def __init__(
        self, settings: ServiceSettings, holder: IndexHolder, encoder: BatchingEncoder, retriever: Retriever
    ) -> None:
        self.settings = settings
        self.holder = holder
        self.encoder = encoder
        self.retriever = retriever

    async def search(self, query: str, top_k: int, history: list[Turn] | None = None) -> SearchResult:
        index = self.holder.current  # this request keeps this version to its end
        started = time.perf_counter()
        vector, lexical_text = await self._query(query, history or [])
        encoded = time.perf_counter()
        hits = self.retriever.search(index, vector, lexical_text, top_k)
        timings = {"encode": round((encoded - started) * 1000, 2), "retrieve": _ms(encoded)}
        return SearchResult(index, hits, timings, vector)

    async def ask(self, question: str, top_k: int, history: list[Turn]) -> AskResult:
        depth = max(top_k, self.settings.answer_passages)
        result = await self.search(question, depth, history)
        started = time.perf_counter()
        answer = answering.answer(
            result.index,
            result.vector,
            question,
            result.hits[: self.settings.answer_passages],
            result.index.idf,
            self.settings.answer_sentences,
            self.settings.abstain_below,
            self.settings.answer_margin,
            self.settings.follow_margin,
        )
        result.timings_ms["answer"] = _ms(started)
        return AskResult(result.index, result.hits[:top_k], result.timings_ms, result.vector, answer)

    async def _query(self, question: str, history: list[Turn]) -> tuple[np.ndarray, str]:
        previous = next((t.content for t in reversed(history) if t.role == "user"), None)
        vector = await self.encoder.encode(question)
        if previous is None:
            return vector, question
        blended = vector + HISTORY_WEIGHT * await self.encoder.encode(previous)
        blended /= np.linalg.norm(blended) or 1.0
        lexical = f"{previous} {question}"
        return blended.astype(np.float32), lexical


def passages(index: LoadedIndex, hits: list[Hit]) -> list[Passage]:
    out = []
    for hit in hits:
        chunk = index.chunk(hit.chunk_id)
        document = index.document(chunk.doc_id)
        out.append(
            Passage(
                chunk_id=chunk.chunk_id,
                doc_id=chunk.doc_id,
                title=document.title,
                source=document.source,
                text=document.text[chunk.start : chunk.end],
                start=chunk.start,
                end=chunk.end,
                score=round(hit.score, 6),
                dense_rank=hit.dense_rank,
                bm25_rank=hit.bm25_rank,
            )
        )
    return out


def citations(index: LoadedIndex, answer: answering.Answer) -> list[Citation]:
    out = []
    for cited in answer.citations:
        document = index.document(cited.doc_id)
        out.append(
            Citation(
                n=cited.n,
                doc_id=cited.doc_id,
                title=document.title,
                source=document.source,
                excerpt=document.text[cited.start : cited.end],
                start=cited.start,
                end=cited.end,
                score=round(cited.score, 6),
            )
        )
    return out
