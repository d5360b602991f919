"""The dense index of one segment: exact below a size, approximate (FAISS HNSW) above it.

A segment's vectors are L2-normalised float32 rows, so an inner product is a cosine; FAISS id i is
row i of the segment (vectors are added in order). Small segments keep an exact `faiss.IndexFlatIP`:
below EXACT_BELOW vectors one flat scan takes a few milliseconds at most. Larger ones get a graph
index, `faiss.IndexHNSWFlat` (inner product), whose storage is itself a flat index holding the rows
as added: `stored_vectors` reads them without a copy, and a filtered search over a few rows computes
their exact inner products there. The choice and every figure below come from bench/ann.py
(bench/results/ann.md): realistic vectors (means of five real sentence embeddings), 384 dimensions.

Search-time parameters (efSearch, the selector) travel with each call in FAISS search parameters,
never set on the index: searches from several threads at once are safe, and an index read back with
faiss.read_index behaves the same. FAISS's OpenMP threads are left as they are (one search of one
query runs on one thread whatever the setting; building an HNSW index uses them all).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Every figure below is from bench/ann.py (bench/results/ann.md): one query, one thread, 384-d vectors
# that are means of five real sentence embeddings, 2 shared cores.
#
# Segments with fewer vectors than this keep an exact IndexFlatIP: a flat search costs about 56 ns a
# vector (5.6 ms p50 at 100,000, 190 ms under load at 1,000,000), so 50,000 is where it reaches the
# dense search's budget of about 3 ms; an HNSW segment of that size searches in about 1 ms.
EXACT_BELOW = 50_000

# HNSW: the graph's degree and build effort. M=32 over M=16: at 100,000, recall@10 0.973 against 0.920
# at efSearch 256 for the same latency class; M=48 is no better for its latency and costs more memory
# and build time. efConstruction 80 over 40: at 1,000,000, recall@10 0.957 against 0.948 at efSearch 384.
HNSW_M = 32
EF_CONSTRUCTION = 80
# efSearch per call (at least k): at 1,000,000, recall@10 0.967 against exact search, 2.4 ms p50.
EF_SEARCH = 512

# A filtered search over fewer allowed rows than this computes their exact inner products (FAISS reads
# just those rows of the flat storage: 0.7 ms for 10,000 rows spread over 1,000,000, 12 ms for 100,000);
# above it, the graph search tests each visited node against a bitmap of the allowed rows (5 ms at
# 1,000,000 with 10% allowed, recall@10 0.96; with 1% allowed it would reach only 0.86).
EXACT_AMONG_BELOW = 50_000
# A filtered graph search visits nodes that are not allowed too: efSearch grows as the allowed share
# shrinks (ef / share), up to this, to keep its recall.
EF_FILTERED_MAX = 1024


def build_dense_index(vectors: np.ndarray, dimension: int) -> Any:
    """The faiss index for one segment: an exact `IndexFlatIP` when it has fewer than EXACT_BELOW
    vectors, else an `IndexHNSWFlat` (inner product, M=HNSW_M, efConstruction=EF_CONSTRUCTION). The
    vectors (n, dimension) float32, L2-normalised, are added in order, so that faiss id == row."""
    import faiss

    rows = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dimension)
    if len(rows) < max(EXACT_BELOW, 1):
        index: Any = faiss.IndexFlatIP(dimension)
    else:
        index = faiss.IndexHNSWFlat(dimension, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = EF_CONSTRUCTION
        index.hnsw.efSearch = EF_SEARCH  # the default of a caller that passes no parameters
    if len(rows):
        index.add(rows)
    return index


def describe(index: Any) -> str:
    """A one-line description of the index for a manifest, e.g. "faiss.IndexFlatIP" or
    "faiss.IndexHNSWFlat(M=32, efConstruction=80, efSearch=512 per search), inner product"."""
    import faiss

    lib: Any = faiss  # its stubs lack HNSW's members
    index = lib.downcast_index(index)
    if isinstance(index, lib.IndexFlatIP):
        return "faiss.IndexFlatIP"
    if isinstance(index, lib.IndexHNSWFlat):
        metric = "inner product" if index.metric_type == lib.METRIC_INNER_PRODUCT else "L2"
        return (
            f"faiss.IndexHNSWFlat(M={index.hnsw.nb_neighbors(1)}, "
            f"efConstruction={index.hnsw.efConstruction}, efSearch={EF_SEARCH} per search), {metric}"
        )
    return f"faiss.{type(index).__name__}"


def search(
    index: Any,
    query: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
    *,
    ef_search: int | None = None,
    exact_among: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The best k rows of the index for `query` (shape (1, d) float32; any shape of d values is
    accepted), as FAISS gives them: (scores, ids), float32 and int64, each of shape (1, k') with
    k' = min(k, rows searched), best first, with no -1 ids (a search that finds fewer is trimmed).

    `allowed`: sorted distinct int64 row ids within the index, or None for all rows; only those rows
    are ranked, with unchanged scores. A flat index answers exactly (with `allowed`, FAISS computes the
    inner products of the listed rows only: an IDSelectorArray). An HNSW index answers with its graph
    search, efSearch = max(EF_SEARCH, k) set for this call only (SearchParametersHNSW: thread-safe);
    with `allowed`, fewer than EXACT_AMONG_BELOW rows are ranked exactly (a scan of just those rows of
    its flat storage), more by the graph search restricted to them (an IDSelectorBitmap) with efSearch
    raised as the allowed share falls (up to EF_FILTERED_MAX).

    Keyword-only, for measurement (bench/ann.py): `ef_search` replaces EF_SEARCH, `exact_among` forces
    (True) or forbids (False) the exact scan of the allowed rows."""
    import faiss

    lib: Any = faiss  # its stubs lack the Python wrappers: selectors from arrays, keyword parameters
    query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
    ntotal = int(index.ntotal)
    if allowed is not None:
        allowed = np.ascontiguousarray(allowed, dtype=np.int64).reshape(-1)
    k = min(int(k), ntotal if allowed is None else len(allowed))
    if k <= 0:
        return np.zeros((1, 0), np.float32), np.zeros((1, 0), np.int64)
    index = lib.downcast_index(index)
    hnsw = isinstance(index, lib.IndexHNSW)
    if not hnsw:
        if allowed is None:
            return _trim(*index.search(query, k))
        if isinstance(index, lib.IndexFlat):  # the inner products of the listed rows only
            return _among_flat(index, query, k, allowed)
        return _among_rows(index, query, k, allowed)
    ef = max(ef_search or EF_SEARCH, k)
    if allowed is None:
        return _trim(*index.search(query, k, params=lib.SearchParametersHNSW(efSearch=ef)))
    if exact_among if exact_among is not None else len(allowed) < EXACT_AMONG_BELOW:
        return _among_flat(lib.downcast_index(index.storage), query, k, allowed)
    share = len(allowed) / ntotal
    ef = max(ef, min(EF_FILTERED_MAX, int(ef / share)))
    bits = np.packbits(_mask(allowed, ntotal), bitorder="little")  # bit i of byte i >> 3: row i
    selector = lib.IDSelectorBitmap(bits)  # refers to `bits`, which outlives the search
    params = lib.SearchParametersHNSW(efSearch=ef, sel=selector)
    return _trim(*index.search(query, k, params=params))


def stored_vectors(index: Any) -> np.ndarray:
    """The index's float32 vectors, shape (ntotal, d), row i = faiss id i, read-only. A zero-copy view
    of the index's own storage where there is one (IndexFlat, and IndexHNSWFlat's flat storage); the
    view holds a reference to the index, which therefore lives as long as the view. Any other index:
    reconstructed (a copy). Used to read chunk vectors by id (score fusion)."""
    import faiss

    owner = index  # the object that owns the C++ index (a downcast proxy does not)
    index = faiss.downcast_index(index)
    flat = index if isinstance(index, faiss.IndexFlat) else None
    if isinstance(index, faiss.IndexHNSW):
        storage = faiss.downcast_index(index.storage)
        flat = storage if isinstance(storage, faiss.IndexFlat) else None
    n, d = int(index.ntotal), int(index.d)
    if not n:
        rows = np.zeros((0, d), np.float32)
    elif flat is not None:
        view = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
        rows = np.asarray(_Owned(view, owner))  # its base keeps the index alive
    else:
        rows = index.reconstruct_n(0, n)
    rows.flags.writeable = False
    return rows


class _Owned:
    """An array's memory and the object that owns it: `np.asarray` of this is a view whose base is this
    object, so the owner lives as long as the view."""

    def __init__(self, array: np.ndarray, owner: Any) -> None:
        self.__array_interface__ = array.__array_interface__
        self._owner = owner


def _among_flat(flat: Any, query: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact search among `allowed` rows of a flat index: with an IDSelectorArray, FAISS computes the
    inner products of the listed rows only (knn_inner_products_by_idx), so the cost follows
    len(allowed), not the index (a bitmap would be tested on every row)."""
    import faiss

    lib: Any = faiss
    selector = lib.IDSelectorArray(allowed)  # refers to `allowed`, which outlives the search
    return _trim(*flat.search(query, k, params=lib.SearchParameters(sel=selector)))


def _among_rows(index: Any, query: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact search among `allowed` rows of any index that reconstructs its vectors."""
    vectors = np.asarray(index.reconstruct_batch(allowed), dtype=np.float32)
    scores = vectors @ query[0]
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return scores[top].reshape(1, -1).astype(np.float32), allowed[top].reshape(1, -1)


def _mask(allowed: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[allowed] = True
    return mask


def _trim(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's results without the -1 ids it pads with when it finds fewer than k."""
    found = ids[0] >= 0
    if bool(found.all()):
        return scores, ids
    return scores[:, found], ids[:, found]
