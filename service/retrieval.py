"""Hybrid retrieval: the dense (FAISS) and BM25 (bm25s) candidate lists, fused; an optional
cross-encoder reorders the fused hits. Both ranks stay on every hit for debugging.

Fusion `score` (the default): each candidate of either list scores

    (1 - sentence_weight) * cos(question, chunk)
      + sentence_weight * max over the chunk's sentences of cos(question, sentence)
      + bm25_weight * bm25(chunk) / best bm25 of the question

The sentence term comes from vectors stored at index time. Fusion `rrf`: reciprocal rank fusion,
Σ weight / (k + rank). docs/retrieval.md has the figures that chose the default and its weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.config import ServiceSettings
from service.index import LoadedIndex


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    score: float
    dense_rank: int | None = None
    bm25_rank: int | None = None


@dataclass(frozen=True)
class RankFusion:
    """Fusion `rrf`, weighted reciprocal rank fusion: RAGQA_RRF_K, RAGQA_DENSE_WEIGHT and
    RAGQA_RRF_BM25_WEIGHT."""

    k: int
    dense_weight: float = 1.0
    bm25_weight: float = 1.0

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> RankFusion:
        return cls(k=settings.rrf_k, dense_weight=settings.dense_weight, bm25_weight=settings.rrf_bm25_weight)


@dataclass(frozen=True)
class ScoreFusion:
    """Fusion `score` (see the module docstring): RAGQA_SENTENCE_WEIGHT and RAGQA_BM25_WEIGHT."""

    sentence_weight: float
    bm25_weight: float

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ScoreFusion:
        return cls(sentence_weight=settings.sentence_weight, bm25_weight=settings.bm25_weight)


def fuse_rrf(dense: list[int], lexical: list[int], fusion: RankFusion) -> list[Hit]:
    """Weighted reciprocal rank fusion: score = Σ weight / (k + rank), ranks from 1."""
    dense_rank = {chunk: rank for rank, chunk in enumerate(dense, start=1)}
    bm25_rank = {chunk: rank for rank, chunk in enumerate(lexical, start=1)}
    scores: dict[int, float] = {}
    for chunk, rank in dense_rank.items():
        scores[chunk] = scores.get(chunk, 0.0) + fusion.dense_weight / (fusion.k + rank)
    for chunk, rank in bm25_rank.items():
        scores[chunk] = scores.get(chunk, 0.0) + fusion.bm25_weight / (fusion.k + rank)
    return _ranked(scores, dense_rank, bm25_rank)


def fuse_scores(
    index: LoadedIndex,
    vector: np.ndarray,
    dense: list[tuple[int, float]],
    lexical: list[tuple[int, float]],
    fusion: ScoreFusion,
) -> list[Hit]:
    """Score fusion over the union of both candidate lists (see the module docstring)."""
    dense_rank = {chunk: rank for rank, (chunk, _) in enumerate(dense, start=1)}
    bm25_rank = {chunk: rank for rank, (chunk, _) in enumerate(lexical, start=1)}
    bm25 = dict(lexical)
    best_bm25 = max(bm25.values(), default=1.0) or 1.0
    candidates = list(dict.fromkeys([c for c, _ in dense] + [c for c, _ in lexical]))
    cosines = index.cosines(vector, candidates)
    scores = {}
    for chunk, cosine in zip(candidates, cosines, strict=True):
        sentence = index.best_sentence_cosine(vector, chunk)
        scores[chunk] = (
            (1 - fusion.sentence_weight) * float(cosine)
            + fusion.sentence_weight * sentence
            + fusion.bm25_weight * bm25.get(chunk, 0.0) / best_bm25
        )
    return _ranked(scores, dense_rank, bm25_rank)


def _ranked(scores: dict[int, float], dense_rank: dict[int, int], bm25_rank: dict[int, int]) -> list[Hit]:
    hits = [Hit(chunk, score, dense_rank.get(chunk), bm25_rank.get(chunk)) for chunk, score in scores.items()]
    hits.sort(key=lambda h: (-h.score, min(h.dense_rank or 10**9, h.bm25_rank or 10**9)))
    return hits


class Retriever:
    def __init__(self, settings: ServiceSettings, reranker: Any | None = None) -> None:
        self.settings = settings
        self.reranker = reranker
        self.rank_fusion = RankFusion.from_settings(settings)
        self.score_fusion = ScoreFusion.from_settings(settings)

    def search(
        self, index: LoadedIndex, vector: np.ndarray, text: str, top_k: int, allowed: np.ndarray | None = None
    ) -> list[Hit]:
        """The best `top_k` fused hits; with `allowed` (chunk ids: a filter's `matching_chunks`), both
        candidate lists come from those chunks only, so that every hit passed the filter and a filter
        never leaves fewer hits than the allowed chunks can give."""
        settings = self.settings
        depth = max(settings.candidates, top_k)
        dense = index.dense(vector, depth, allowed)
        lexical = index.lexical(text, depth, allowed)
        if settings.fusion == "rrf":
            hits = fuse_rrf([c for c, _ in dense], [c for c, _ in lexical], self.rank_fusion)
        else:
            hits = fuse_scores(index, vector, dense, lexical, self.score_fusion)
        if self.reranker is not None and hits:
            hits = self.rerank(index, text, hits[: max(settings.rerank_depth, top_k)])
        return hits[:top_k]

    def rerank(self, index: LoadedIndex, text: str, hits: list[Hit]) -> list[Hit]:
        assert self.reranker is not None
        pairs = [(text, index.chunk_text(hit.chunk_id)) for hit in hits]
        scores = self.reranker.predict(pairs, show_progress_bar=False)
        ranked = sorted(zip(hits, scores, strict=True), key=lambda pair: -float(pair[1]))
        return [replace(hit, score=float(score)) for hit, score in ranked]


def load_reranker(folder: str) -> Any:
    """A sentence-transformers CrossEncoder from a local folder (no hub is contacted)."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(folder, device="cpu", local_files_only=True)
