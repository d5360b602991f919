"""Question answering over the live index: encode → retrieve → answer, with timings.

Follow-ups: the dense query is the mean of the question's vector and the vector of the previous user
question, and BM25 reads both questions, so "And what about Georgia?" keeps the conversation's
topic while its own words lead; answer sentences are scored against the blended vector and the
words of the question itself."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.filters import ChunkFilter
from service import answering, generative
from service.config import ServiceSettings
from service.encoder import BatchingEncoder
from service.holder import IndexHolder
from service.index import LoadedIndex
from service.reader import Reader
from service.retrieval import Hit, Retriever
from service.schemas import AskRequest, AskResponse, Citation, Passage, Turn, UnsupportedSentence

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
        self,
        settings: ServiceSettings,
        holder: IndexHolder,
        encoder: BatchingEncoder,
        retriever: Retriever,
        reader: Reader | None = None,
    ) -> None:
        self.settings = settings
        self.reader = reader
        self.holder = holder
        self.encoder = encoder
        self.retriever = retriever
        self.answer_policy = answering.AnswerPolicy.from_settings(settings)
        self.llm = generative.LLMClient(settings) if settings.llm_url else None

    async def search(
        self,
        query: str,
        top_k: int,
        history: list[Turn] | None = None,
        chunk_filter: ChunkFilter | None = None,
    ) -> SearchResult:
        """The best `top_k` hits; with a filter, retrieval searches only the chunks it allows (resolved
        against this request's version), so every hit passed it."""
        index = self.holder.current  # this request keeps this version to its end
        started = time.perf_counter()
        vector, lexical_text = await self._query(query, history or [])
        encoded = time.perf_counter()
        allowed = index.matching_chunks(chunk_filter) if chunk_filter is not None else None
        hits = self.retriever.search(index, vector, lexical_text, top_k, allowed)
        timings = {"encode": round((encoded - started) * 1000, 2), "retrieve": _ms(encoded)}
        return SearchResult(index, hits, timings, vector)

    async def ask(
        self, question: str, top_k: int, history: list[Turn], chunk_filter: ChunkFilter | None = None
    ) -> AskResult:
        depth = max(top_k, self.settings.answer_passages, self.settings.llm_passages if self.llm else 0)
        result = await self.search(question, depth, history, chunk_filter)
        started = time.perf_counter()
        hits = result.hits[: self.settings.answer_passages]
        pointed = None
        if self.reader is not None and hits:
            pointed = await asyncio.to_thread(read, self.reader, result.index, question, hits)
            result.timings_ms["read"] = _ms(started)
            started = time.perf_counter()
        answer = answering.answer(result.index, result.vector, question, hits, self.answer_policy, pointed)
        result.timings_ms["answer"] = _ms(started)
        return AskResult(result.index, result.hits, result.timings_ms, result.vector, answer)

    async def answer_events(self, body: AskRequest) -> AsyncIterator[tuple[str, Any]]:
        """The answer to a request as events: ("passages", [Passage]), then ("delta", text) and
        ("citation", Citation) in answer order (each citation right after the delta holding its
        marker), then ("done", AskResponse) with the whole answer, which the deltas concatenate to."""
        chunk_filter = body.filter.to_chunk_filter() if body.filter is not None else None
        result = await self.ask(body.question, body.top_k, body.history, chunk_filter)
        passages = passages_of(result.index, result.hits[: body.top_k])
        yield "passages", passages
        generated = generative.Generated()
        text = ""
        cited: list[Citation] = []
        mode = body.mode or ("generative" if self.llm else "extractive")
        if mode == "generative" and self.llm is None:
            generated.fallback_reason = "no LLM is configured (RAGQA_LLM_URL)"
        elif mode == "generative" and self.llm and not result.answer.abstained:  # weak evidence: no LLM call
            sources = result.hits[: self.settings.llm_passages]
            checker = generative.Checker(result.index, sources, self.encoder, self.settings.support_threshold)
            prompt = generative.messages(result.index, sources, body.question, body.history)
            async for sentence in generative.generate(
                self.llm, checker, prompt, self.settings.llm_timeout, generated
            ):
                new = [
                    citation(result.index, len(cited) + i, s.sentence)
                    for i, s in enumerate(sentence.support, 1)
                ]
                delta = (" " if text else "") + sentence.text + "".join(f" [{c.n}]" for c in new)
                text += delta
                cited += new
                yield "delta", delta
                for c in new:
                    yield "citation", c
            result.timings_ms.update(generated.timings_ms)
        if not text:  # extractive mode, an abstention, or a generative answer that fell back
            mode = "extractive"
            text, cited = result.answer.text, citations(result.index, result.answer)
            for event in answer_in_parts(text, cited):
                yield event
        yield (
            "done",
            AskResponse(
                question=body.question,
                answer=text,
                abstained=result.answer.abstained,
                mode=mode,
                fallback_reason=generated.fallback_reason,
                unsupported=[
                    UnsupportedSentence(
                        text=s.text, cited=s.cited, score=round(s.score, 6), names_not_in_source=s.novel
                    )
                    for s in generated.unsupported
                ],
                confidence=round(result.answer.best_score, 6)
                if math.isfinite(result.answer.best_score)
                else None,
                citations=cited,
                passages=passages,
                index_version=result.index.version_id,
                timings_ms=result.timings_ms,
            ),
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` by the embedding model's tokenizer (the usage of a chat completion)."""
        encoded = self.encoder.embedder.tokenizer(text, add_special_tokens=False, verbose=False)
        return len(encoded["input_ids"])

    async def close(self) -> None:
        if self.llm is not None:
            await self.llm.aclose()

    async def _query(self, question: str, history: list[Turn]) -> tuple[np.ndarray, str]:
        previous = next((t.content for t in reversed(history) if t.role == "user"), None)
        vector = await self.encoder.encode(question)
        if previous is None:
            return vector, question
        blended = vector + HISTORY_WEIGHT * await self.encoder.encode(previous)
        blended /= np.linalg.norm(blended) or 1.0
        lexical = f"{previous} {question}"
        return blended.astype(np.float32), lexical


def read(reader: Reader, index: LoadedIndex, question: str, hits: list[Hit]) -> tuple[str, int] | None:
    """Where the reader puts the answer: (document id, character offset of the span's start)."""
    chunks = [index.chunk(hit.chunk_id) for hit in hits]
    span = reader.read(question, [index.chunk_text(chunk.chunk_id) for chunk in chunks])
    return None if span is None else (chunks[span.passage].doc_id, chunks[span.passage].start + span.start)


async def final_answer(events: AsyncIterator[tuple[str, Any]]) -> AskResponse:
    """The whole answer: the `done` event of `answer_events` (the events before it passed over)."""
    async for name, data in events:
        if name == "done":
            response: AskResponse = data
            return response
    raise AssertionError("an answer ends with its done event")


def passages_of(index: LoadedIndex, hits: list[Hit]) -> list[Passage]:
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


def citation(index: LoadedIndex, n: int, span: answering.Sentence | answering.CitedSpan) -> Citation:
    document = index.document(span.doc_id)
    return Citation(
        n=n,
        doc_id=span.doc_id,
        title=document.title,
        source=document.source,
        excerpt=document.text[span.start : span.end],
        start=span.start,
        end=span.end,
        score=round(span.score, 6),
    )


def citations(index: LoadedIndex, answer: answering.Answer) -> list[Citation]:
    return [citation(index, cited.n, cited) for cited in answer.citations]


def answer_in_parts(text: str, cited: list[Citation]) -> list[tuple[str, Any]]:
    """An answer as deltas, each up to and including a marker, with that marker's citation after it."""
    events: list[tuple[str, Any]] = []
    position = 0
    for c in cited:
        end = text.index(f"[{c.n}]", position) + len(f"[{c.n}]")
        events += [("delta", text[position:end]), ("citation", c)]
        position = end
    if position < len(text):
        events.append(("delta", text[position:]))
    return events
