"""Fusion of the dense and BM25 candidate lists (service.retrieval): reciprocal rank fusion on chunk ids
alone, and score fusion on a real small store (conftest's `small_index`: three tiny documents indexed
in this process with the bundled model). The expectations come from the formulas of the module's
docstring and from bounds on cosines, never from a run's output."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import pytest

from service.config import ServiceSettings
from service.retrieval import Hit, RankFusion, Retriever, ScoreFusion, fuse_rrf, fuse_scores

if TYPE_CHECKING:
    from indexer.embedding import Embedder
    from service.index import LoadedIndex

pytestmark = pytest.mark.unit


def order(hits: list[Hit]) -> list[int]:
    return [hit.chunk_id for hit in hits]


# --- reciprocal rank fusion ----------------------------------------------------------------------


def test_rrf_sums_weight_over_k_plus_rank_and_keeps_both_ranks() -> None:
    fusion = RankFusion(k=60, dense_weight=1.0, bm25_weight=0.5)
    hits = {hit.chunk_id: hit for hit in fuse_rrf([10, 20, 30], [30, 40], fusion)}
    assert set(hits) == {10, 20, 30, 40}
    assert hits[30].score == pytest.approx(1.0 / (60 + 3) + 0.5 / (60 + 1))
    assert hits[10].score == pytest.approx(1.0 / (60 + 1))
    assert hits[40].score == pytest.approx(0.5 / (60 + 2))
    assert (hits[30].dense_rank, hits[30].bm25_rank) == (3, 1)
    assert (hits[10].dense_rank, hits[10].bm25_rank) == (1, None)
    assert (hits[40].dense_rank, hits[40].bm25_rank) == (None, 2)
    assert fuse_rrf([], [], fusion) == []


def test_rrf_orders_by_score_best_first() -> None:
    hits = fuse_rrf([1, 2, 3, 4], [4, 5], RankFusion(k=60))
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert hits[0].chunk_id == 4, "the one chunk both lists found beats every chunk only one found"


def test_a_small_k_favours_a_first_place_and_a_large_k_agreement() -> None:
    """Chunk 1 is first in the dense list only; chunk 9 is fourth in both. With k=1, 1/2 > 2/5; with
    k=60, 1/61 < 2/64."""
    dense, lexical = [1, 2, 3, 9], [5, 6, 7, 9]
    small = order(fuse_rrf(dense, lexical, RankFusion(k=1)))
    large = order(fuse_rrf(dense, lexical, RankFusion(k=60)))
    assert small.index(1) < small.index(9)
    assert large.index(9) < large.index(1)


def test_rrf_weights_decide_between_the_lists() -> None:
    dense, lexical = [1, 2], [2, 1]
    even = fuse_rrf(dense, lexical, RankFusion(k=60))
    assert even[0].score == pytest.approx(even[1].score), "mirrored lists tie at equal weights"
    assert order(fuse_rrf(dense, lexical, RankFusion(k=60, dense_weight=2.0)))[0] == 1
    assert order(fuse_rrf(dense, lexical, RankFusion(k=60, bm25_weight=2.0)))[0] == 2
    only_dense = fuse_rrf(dense, lexical, RankFusion(k=60, bm25_weight=0.0))
    assert [hit.score for hit in only_dense] == pytest.approx([1 / 61, 1 / 62])


def test_rrf_ties_go_to_the_better_best_rank() -> None:
    """With k=1, chunk 8 (third in both lists: 1/4 + 1/4) ties chunk 5 (first in BM25 only: 1/2); 8
    comes first in the dict the scores are summed in, yet 5 ranks before it."""
    hits = fuse_rrf([7, 6, 8], [5, 4, 8], RankFusion(k=1))
    by_id = {hit.chunk_id: hit for hit in hits}
    assert by_id[8].score == by_id[5].score == 0.5
    assert order(hits).index(5) < order(hits).index(8)


def test_rank_fusion_reads_its_settings() -> None:
    settings = ServiceSettings(rrf_k=7, dense_weight=0.3, rrf_bm25_weight=2.5)
    assert RankFusion.from_settings(settings) == RankFusion(k=7, dense_weight=0.3, bm25_weight=2.5)
    assert ScoreFusion.from_settings(ServiceSettings(sentence_weight=0.2, bm25_weight=0.4)) == ScoreFusion(
        sentence_weight=0.2, bm25_weight=0.4
    )


# --- score fusion on a real index ----------------------------------------------------------------


def rank_in(candidates: list[tuple[int, float]], chunk_id: int) -> int | None:
    return next((rank for rank, (c, _) in enumerate(candidates, 1) if c == chunk_id), None)


def chunk_ids(index: LoadedIndex) -> list[int]:
    return [chunk.chunk_id for chunk in index.chunk_records()]


def test_score_fusion_is_the_weighted_sum_over_the_union_of_both_lists(
    small_index: LoadedIndex, embedder: Embedder
) -> None:
    question = "Who looked after the lamp of the lighthouse?"
    vector = embedder.encode_short([question])[0]
    dense = small_index.dense(vector, 3)
    lexical = small_index.lexical(question, 3)
    assert dense and lexical
    union = list(dict.fromkeys([c for c, _ in dense] + [c for c, _ in lexical]))
    best_bm25 = max(score for _, score in lexical)
    for weights in (ScoreFusion(0, 0), ScoreFusion(1, 0), ScoreFusion(0.5, 0.1), ScoreFusion(0.3, 2)):
        hits = fuse_scores(small_index, vector, dense, lexical, weights)
        assert sorted(order(hits)) == sorted(union), "each candidate of either list, once"
        for hit in hits:
            cosine = float(small_index.cosines(vector, [hit.chunk_id])[0])
            sentence = small_index.best_sentence_cosine(vector, hit.chunk_id)
            bm25 = dict(lexical).get(hit.chunk_id, 0.0) / best_bm25
            expected = (
                (1 - weights.sentence_weight) * cosine
                + weights.sentence_weight * sentence
                + weights.bm25_weight * bm25
            )
            assert hit.score == pytest.approx(expected, abs=1e-6), (weights, hit)
            assert hit.dense_rank == rank_in(dense, hit.chunk_id)
            assert hit.bm25_rank == rank_in(lexical, hit.chunk_id)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # No BM25 candidates: the lexical term is 0, nothing divides by zero.
    alone = fuse_scores(small_index, vector, dense, [], ScoreFusion(0.5, 1.0))
    assert sorted(order(alone)) == sorted(c for c, _ in dense) and all(h.bm25_rank is None for h in alone)


def test_a_bm25_weight_lifts_the_lexical_hit_over_every_dense_one(
    small_index: LoadedIndex, embedder: Embedder
) -> None:
    """Give the chunk that matches the question worst the only BM25 score. Without a BM25 weight it
    is last; with weight 3 its lexical term (3 × 1) outweighs any gap in the cosine terms (at most 2)."""
    vector = embedder.encode_short(["Why do lighthouse lamps switch on at dusk?"])[0]
    ids = chunk_ids(small_index)
    cosines = small_index.cosines(vector, ids)
    dense = sorted(zip(ids, map(float, cosines), strict=True), key=lambda pair: -pair[1])
    worst = dense[-1][0]
    lexical = [(worst, 7.5)]
    assert order(fuse_scores(small_index, vector, dense, lexical, ScoreFusion(0.5, 0.0)))[-1] == worst
    assert order(fuse_scores(small_index, vector, dense, lexical, ScoreFusion(0.5, 3.0)))[0] == worst


def test_the_sentence_weight_can_reverse_two_chunks(small_index: LoadedIndex) -> None:
    """Asked with one stored sentence's own vector, some chunk matches better as a whole and another
    holds the better single sentence; weight 0 ranks by the whole chunk, weight 1 by its best sentence."""
    ids = chunk_ids(small_index)
    reversed_pair = None
    for chunk_id in ids:
        for vector in small_index.sentence_vectors_of(chunk_id):
            whole = dict(zip(ids, map(float, small_index.cosines(vector, ids)), strict=True))
            best = {c: small_index.best_sentence_cosine(vector, c) for c in ids}
            for a, b in itertools.permutations(ids, 2):
                if whole[a] > whole[b] + 1e-3 and best[b] > best[a] + 1e-3:
                    reversed_pair = (np.asarray(vector), a, b)
                    break
            if reversed_pair:
                break
        if reversed_pair:
            break
    assert reversed_pair, "the small store should hold two chunks that whole and best sentence rank apart"
    vector, a, b = reversed_pair
    dense = [(c, float(s)) for c, s in zip(ids, small_index.cosines(vector, ids), strict=True)]
    by_chunk = order(fuse_scores(small_index, vector, dense, [], ScoreFusion(0.0, 0.0)))
    by_sentence = order(fuse_scores(small_index, vector, dense, [], ScoreFusion(1.0, 0.0)))
    assert by_chunk.index(a) < by_chunk.index(b)
    assert by_sentence.index(b) < by_sentence.index(a)


def test_the_retriever_fuses_as_configured(small_index: LoadedIndex, embedder: Embedder) -> None:
    question = "What does a sourdough starter contain?"
    vector = embedder.encode_short([question])[0]
    depth = ServiceSettings().candidates
    dense, lexical = small_index.dense(vector, depth), small_index.lexical(question, depth)
    rrf = Retriever(ServiceSettings(fusion="rrf", rrf_k=5)).search(small_index, vector, question, 3)
    assert rrf == fuse_rrf([c for c, _ in dense], [c for c, _ in lexical], RankFusion(k=5))[:3]
    scored = Retriever(ServiceSettings(fusion="score", bm25_weight=0.7)).search(
        small_index, vector, question, 2
    )
    assert scored == fuse_scores(small_index, vector, dense, lexical, ScoreFusion(0.5, 0.7))[:2]
    assert small_index.document(small_index.chunk(scored[0].chunk_id).doc_id).title == "Bread"
