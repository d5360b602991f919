"""indexer.dense with real FAISS on small data: the exact index below EXACT_BELOW, the HNSW index above
it (EXACT_BELOW lowered here), filtered searches, empty indexes, a write/read round trip, and the
stored vectors."""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from indexer import dense

pytestmark = pytest.mark.unit

D = 32
N = 3000


def normalised(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float32)
    return np.ascontiguousarray(rows / np.linalg.norm(rows, axis=1, keepdims=True))


def clustered(n: int, seed: int, clusters: int = 40) -> np.ndarray:
    """Unit vectors around a few centres: text embeddings are clustered, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = normalised(rng.standard_normal((clusters, D)))
    picks = rng.integers(0, clusters, n)
    return normalised(centres[picks] + 0.35 * rng.standard_normal((n, D)))


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(N, seed=1)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return clustered(60, seed=2)


@pytest.fixture
def ann(monkeypatch: pytest.MonkeyPatch, vectors: np.ndarray) -> Any:
    """An HNSW index over the vectors: EXACT_BELOW lowered so that 3,000 vectors take the ANN path."""
    monkeypatch.setattr(dense, "EXACT_BELOW", 1000)
    return dense.build_dense_index(vectors, D)


@pytest.fixture
def flat(vectors: np.ndarray) -> Any:
    return dense.build_dense_index(vectors, D)


def exact(vectors: np.ndarray, query: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Brute force: the ids of the k best inner products, among `rows` if given."""
    ids = np.arange(len(vectors)) if rows is None else rows
    scores = vectors[ids] @ query
    return np.asarray(ids[np.argsort(-scores, kind="stable")[:k]])


def test_small_segments_get_an_exact_flat_index(flat: Any) -> None:
    assert dense.EXACT_BELOW > N
    assert isinstance(flat, faiss.IndexFlatIP)
    assert dense.describe(flat) == "faiss.IndexFlatIP"
    assert flat.ntotal == N


def test_exact_path_equals_brute_force(flat: Any, vectors: np.ndarray, queries: np.ndarray) -> None:
    for query in queries[:20]:
        scores, ids = dense.search(flat, query.reshape(1, -1), 10)
        assert ids.shape == scores.shape == (1, 10)
        assert ids.dtype == np.int64 and scores.dtype == np.float32
        truth = exact(vectors, query, 10)
        np.testing.assert_allclose(scores[0], vectors[truth] @ query, rtol=1e-5, atol=1e-6)
        assert set(ids[0].tolist()) == set(truth.tolist())


def test_large_segments_get_hnsw_with_high_recall(ann: Any, vectors: np.ndarray, queries: np.ndarray) -> None:
    assert isinstance(ann, faiss.IndexHNSWFlat)
    assert ann.ntotal == N
    assert dense.describe(ann).startswith(f"faiss.IndexHNSWFlat(M={dense.HNSW_M}, ")
    assert dense.describe(ann).endswith("inner product")
    hits = 0
    for query in queries:
        scores, ids = dense.search(ann, query, 10)  # a 1-d query is accepted too
        assert ids.shape == (1, 10)
        assert np.all(np.diff(scores[0]) <= 1e-6)  # best first
        np.testing.assert_allclose(scores[0], vectors[ids[0]] @ query, rtol=1e-5, atol=1e-6)
        hits += len(set(ids[0].tolist()) & set(exact(vectors, query, 10).tolist()))
    assert hits / (10 * len(queries)) >= 0.95


@pytest.mark.parametrize("kind", ["flat", "ann"])
def test_allowed_restricts_the_results(
    kind: str, request: pytest.FixtureRequest, vectors: np.ndarray, queries: np.ndarray
) -> None:
    index = request.getfixturevalue(kind)
    allowed = np.sort(np.random.default_rng(3).choice(N, 150, replace=False)).astype(np.int64)
    for query in queries[:20]:
        scores, ids = dense.search(index, query.reshape(1, -1), 10, allowed)
        assert ids.shape == (1, 10)
        assert set(ids[0].tolist()) <= set(allowed.tolist())
        # Few allowed rows: their exact best, on either index.
        assert set(ids[0].tolist()) == set(exact(vectors, query, 10, allowed).tolist())
        np.testing.assert_allclose(scores[0], vectors[ids[0]] @ query, rtol=1e-5, atol=1e-6)


def test_many_allowed_rows_use_the_filtered_graph_search(
    ann: Any, vectors: np.ndarray, queries: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dense, "EXACT_AMONG_BELOW", 100)  # 900 allowed rows: the bitmap in the graph search
    allowed = np.sort(np.random.default_rng(4).choice(N, 900, replace=False)).astype(np.int64)
    hits = 0
    for query in queries:
        _, ids = dense.search(ann, query.reshape(1, -1), 10, allowed)
        assert set(ids[0].tolist()) <= set(allowed.tolist())
        hits += len(set(ids[0].tolist()) & set(exact(vectors, query, 10, allowed).tolist()))
    assert hits / (10 * len(queries)) >= 0.95
    # Forcing either path gives allowed rows only.
    for forced in (True, False):
        _, ids = dense.search(ann, queries[0], 10, allowed, exact_among=forced)
        assert set(ids[0].tolist()) <= set(allowed.tolist())


@pytest.mark.parametrize("kind", ["flat", "ann"])
def test_k_beyond_what_there_is(kind: str, request: pytest.FixtureRequest, queries: np.ndarray) -> None:
    index = request.getfixturevalue(kind)
    query = queries[:1]
    few = np.array([5, 17, 2999], dtype=np.int64)
    scores, ids = dense.search(index, query, 50, few)
    assert sorted(ids[0].tolist()) == [5, 17, 2999] and scores.shape == (1, 3)
    assert dense.search(index, query, 0)[1].shape == (1, 0)
    assert dense.search(index, query, -3)[1].shape == (1, 0)
    assert dense.search(index, query, 10, np.zeros(0, np.int64))[1].shape == (1, 0)
    _, ids = dense.search(index, query, N + 100)
    assert ids.shape[1] <= N and (ids >= 0).all() and len(set(ids[0].tolist())) == ids.shape[1]
    if kind == "flat":
        assert ids.shape == (1, N)


@pytest.mark.parametrize("exact_below", [100_000, 0])
def test_an_empty_index(exact_below: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(dense, "EXACT_BELOW", exact_below)
    index = dense.build_dense_index(np.zeros((0, D), np.float32), D)
    assert index.ntotal == 0 and dense.describe(index) == "faiss.IndexFlatIP"
    query = np.ones((1, D), np.float32)
    for allowed in (None, np.zeros(0, np.int64)):
        scores, ids = dense.search(index, query, 10, allowed)
        assert scores.shape == ids.shape == (1, 0)
    assert dense.stored_vectors(index).shape == (0, D)
    faiss.write_index(index, str(tmp_path / "empty.faiss"))
    again = faiss.read_index(str(tmp_path / "empty.faiss"))
    assert dense.search(again, query, 10)[1].shape == (1, 0)


@pytest.mark.parametrize("kind", ["flat", "ann"])
def test_write_and_read_back_gives_the_same_results(
    kind: str, request: pytest.FixtureRequest, queries: np.ndarray, tmp_path: Path
) -> None:
    index = request.getfixturevalue(kind)
    path = tmp_path / "index.faiss"
    faiss.write_index(index, str(path))
    again = faiss.read_index(str(path))
    assert dense.describe(again) == dense.describe(index)
    allowed = np.arange(0, N, 7, dtype=np.int64)
    for query in queries[:20]:
        for rows in (None, allowed, allowed[:30]):
            before = dense.search(index, query, 10, rows)
            after = dense.search(again, query, 10, rows)
            np.testing.assert_array_equal(before[1], after[1])
            np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(dense.stored_vectors(again), dense.stored_vectors(index))


@pytest.mark.parametrize("kind", ["flat", "ann"])
def test_stored_vectors_are_the_added_rows_read_only(
    kind: str, request: pytest.FixtureRequest, vectors: np.ndarray
) -> None:
    index = request.getfixturevalue(kind)
    stored = dense.stored_vectors(index)
    assert stored.dtype == np.float32 and stored.shape == (N, D)
    np.testing.assert_array_equal(stored, vectors)
    assert not stored.flags.writeable
    with pytest.raises(ValueError):
        stored[0, 0] = 1.0
    assert not stored.flags.owndata  # a view of the index's own storage, not a copy


def test_stored_vectors_keep_their_index_alive(vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense, "EXACT_BELOW", 1000)
    stored = dense.stored_vectors(dense.build_dense_index(vectors, D))  # the index is referenced by no name
    gc.collect()
    np.testing.assert_array_equal(stored, vectors)


def test_searches_from_several_threads_agree(ann: Any, queries: np.ndarray) -> None:
    allowed = np.arange(0, N, 3, dtype=np.int64)

    def one(i: int) -> np.ndarray:
        return dense.search(ann, queries[i % len(queries)], 10, allowed if i % 2 else None)[1]

    alone = [one(i) for i in range(120)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(one, range(120)))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)
