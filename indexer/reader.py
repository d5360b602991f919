"""The one read interface of a store version: `StoreReader`, the whole contract between a store backend
and the service, and `LocalStoreReader`, the backend that loads a version written by indexer.store.

A reader is one immutable version, safe to use from several threads at once. Chunks are numbered
0..chunk_count-1 (`chunk_id`); vectors are float32 rows of `manifest.model.dimension` values,
L2-normalised, so an inner product is a cosine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer import store as st
from indexer.filters import ChunkFilter, FilterLookup
from indexer.text import WordFrequencies


class StoreReader(Protocol):
    """What the service may ask of a store version. Nothing here names a file or returns a library's
    index object, so that another backend (a vector database) can implement it too. An implementation
    is one immutable version (every answer stays the same for its whole life), opened and checked
    completely before it is returned, and safe to call from several threads at once."""

    @property
    def version_id(self) -> str:
        """The version's id, unique within its store; the same for the reader's whole life."""
        ...

    @property
    def manifest(self) -> st.Manifest:
        """The version's manifest: the model its vectors come from, the chunker's settings, counts."""
        ...

    @property
    def document_count(self) -> int:
        """How many documents the version holds (`manifest.counts.documents`)."""
        ...

    @property
    def chunk_count(self) -> int:
        """How many chunks the version holds; chunk ids are 0..chunk_count-1."""
        ...

    def document(self, doc_id: str) -> st.DocumentRecord:
        """The document with this id; KeyError when there is none."""
        ...

    def find_document(self, doc_id: str) -> st.DocumentRecord | None:
        """The document with this id, or None when there is none."""
        ...

    def documents(self, first: int = 0, stop: int | None = None) -> Iterator[st.DocumentRecord]:
        """The documents at positions first..stop-1 of the order the indexer wrote them (the same on
        every call; every document by default); a page costs its own documents, not those before it."""
        ...

    def chunk(self, chunk_id: int) -> st.ChunkRecord:
        """The chunk with this id; IndexError when the id is not in 0..chunk_count-1."""
        ...

    def chunk_text(self, chunk_id: int) -> str:
        """The chunk's text: its document's text[start:end], without the title that was embedded with
        it; IndexError like `chunk`."""
        ...

    def chunk_records(self) -> Iterator[st.ChunkRecord]:
        """Every chunk once, in chunk id order (0, 1, 2...); a document's chunks are consecutive and in
        text order."""
        ...

    def matching_chunks(self, chunk_filter: ChunkFilter) -> np.ndarray | None:
        """The chunks a filter allows (see `ChunkFilter` for each condition's meaning; all must hold),
        as `allowed` for `dense` and `lexical`: None when the filter sets no condition (every chunk is
        allowed: search unrestricted), else the ids of the chunks of the documents meeting every
        condition, ascending, distinct, int64, possibly empty (a filter that matches nothing is not an
        error). The same for every call on one reader. A backend that filters natively computes the
        same set with its own expression (Milvus: `doc_id in [...] and source like "prefix%" and
        metadata["field"] in [...]`, where a list-valued field matches by any element)."""
        ...

    def dense(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The k chunks whose vectors have the highest inner product (cosine) with `vector`, as
        (chunk_id, cosine), best first (ties in no set order); all chunks when k exceeds chunk_count,
        [] when k <= 0. `vector` holds manifest.model.dimension values (any shape); another size is a
        ValueError. With `allowed` (distinct chunk ids, as `matching_chunks` returns them), only those
        chunks are searched: the best min(k, len(allowed)) of them, exactly as if no other chunk
        existed (never fewer because better chunks outside were left out); [] when it is empty;
        IndexError for an id not in 0..chunk_count-1. None searches every chunk."""
        ...

    def lexical(self, text: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The k chunks with the best BM25 score for `text`, as (chunk_id, score), best first (ties in
        no set order), and only those scoring above 0: fewer than k (or none) when fewer chunks share a
        term with the text; [] when k <= 0. The text is tokenized as manifest.index.lexical_tokenizer
        says. With `allowed` (as for `dense`), only those chunks are scored and ranked, with the same
        scores as unrestricted (corpus statistics are the whole version's); [] when it is empty."""
        ...

    def chunk_vectors(self, chunk_ids: Sequence[int]) -> np.ndarray:
        """The chunks' vectors, one float32 row per id in the order given (repeats allowed), shape
        (len(chunk_ids), dimension); IndexError for an id not in 0..chunk_count-1. Cosines with a
        vector `v` are `chunk_vectors(ids) @ v`."""
        ...

    def sentence_vectors_of(self, chunk_id: int) -> np.ndarray:
        """The chunk's sentences' vectors, one float32 row per entry of chunk(chunk_id).sentences, in
        that order: shape (len(sentences), dimension). Read-only (may be a view of shared memory);
        IndexError like `chunk`."""
        ...

    def word_frequencies(self) -> WordFrequencies | None:
        """How many chunks hold each word of the answer step (indexer.text.words of `chunk_text`), over
        every chunk, as stored with the version when it was written; None when the version holds none
        (the caller counts them over `chunk_text` itself)."""
        ...


def open_reader(store: Path, model_name: str | None = None, version_id: str | None = None) -> StoreReader:
    """The live version of the store at `store` (or `version_id`), loaded and checked; with
    `model_name`, a version built with another model is a ModelMismatchError. NoVersionError when the
    store has no published version, StoreError when the version is damaged."""
    return LocalStoreReader.open(store, model_name, version_id)


class LocalStoreReader:
    """A version of a local store (indexer.store's files): FAISS for dense search (its flat index's own
    storage is also where `chunk_vectors` reads), bm25s for lexical search, the records as columns
    (records/, mapped; the texts read on demand), the sentence vectors read from sentences.npy a chunk at
    a time, and the answer step's word counts of idf.json."""

    def __init__(
        self,
        version: st.Version,
        faiss_index: Any,
        bm25: Any,
        bm25_tokenizer: Any,
        sentence_vectors: np.ndarray,
    ) -> None:
        """Check the loaded parts against the version's records (StoreError when they disagree); `open`
        loads them."""
        _check_records(version)
        _check_faiss(version, faiss_index)
        _check_bm25(version, bm25)
        self._offsets = version.chunks.sentence_offsets
        _check_sentence_vectors(version, sentence_vectors, int(self._offsets[-1]))
        self._word_frequencies = version.load_word_frequencies()
        self._version = version
        self._chunks = version.chunks
        self._documents = version.documents
        self._dimension = version.manifest.model.dimension
        self._faiss = faiss_index
        self._bm25 = bm25
        self._bm25_tokenizer = bm25_tokenizer
        self._sentence_vectors = st.Rows(_read_only(sentence_vectors))  # from the file, a chunk at a time
        self._chunk_vectors = _stored_vectors(faiss_index, self._dimension)

    @classmethod
    def open(
        cls, store: Path, model_name: str | None = None, version_id: str | None = None
    ) -> LocalStoreReader:
        """See `open_reader`."""
        version = st.open_version(store, model_name=model_name, version_id=version_id)
        bm25, tokenizer = version.load_bm25()
        return cls(version, version.load_faiss(), bm25, tokenizer, version.load_sentence_vectors())

    # --- records ----------------------------------------------------------------------------

    @property
    def version_id(self) -> str:
        return self._version.version_id

    @property
    def manifest(self) -> st.Manifest:
        return self._version.manifest

    @property
    def document_count(self) -> int:
        return len(self._documents)

    @property
    def chunk_count(self) -> int:
        return len(self._chunks)

    def document(self, doc_id: str) -> st.DocumentRecord:
        try:
            return self._documents[doc_id]
        except KeyError:
            raise KeyError(f"no document with id {doc_id!r} in version {self.version_id}") from None

    def find_document(self, doc_id: str) -> st.DocumentRecord | None:
        return self._documents.get(doc_id)

    def documents(self, first: int = 0, stop: int | None = None) -> Iterator[st.DocumentRecord]:
        return self._documents.records(first, stop)

    def chunk(self, chunk_id: int) -> st.ChunkRecord:
        return self._chunks[self._chunk_id(chunk_id)]

    def chunk_text(self, chunk_id: int) -> str:
        return self._chunks.text(self._chunk_id(chunk_id))

    def _chunk_id(self, chunk_id: int) -> int:
        """`chunk_id`, or an IndexError when it is not in 0..chunk_count-1 (no wrapping round)."""
        if not 0 <= chunk_id < len(self._chunks):
            raise IndexError(f"no chunk {chunk_id} in version {self.version_id} ({len(self._chunks)} chunks)")
        return chunk_id

    def chunk_records(self) -> Iterator[st.ChunkRecord]:
        return iter(self._chunks)

    # --- vectors and search -----------------------------------------------------------------

    @cached_property
    def _filter_lookup(self) -> FilterLookup:
        """Built on the first filter (one pass over the documents and one over the chunks), then kept."""
        return FilterLookup(self._documents.facts(), self.chunk_records())

    def matching_chunks(self, chunk_filter: ChunkFilter) -> np.ndarray | None:
        return self._filter_lookup.matching_chunks(chunk_filter)

    def dense(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self._dimension:
            raise ValueError(f"a vector of {query.shape[1]} values; this version's are {self._dimension}")
        restrict = None if allowed is None else self._allowed_ids(allowed)
        if restrict is not None:
            return self._dense_among(query, k, restrict)
        k = min(k, self._faiss.ntotal)
        if k <= 0:
            return []
        scores, ids = self._faiss.search(query, k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def _dense_among(self, query: np.ndarray, k: int, allowed: np.ndarray) -> list[tuple[int, float]]:
        scores, ids = faiss_search_among(self._faiss, query, k, allowed)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def lexical(self, text: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        restrict = None if allowed is None else self._allowed_ids(allowed)
        ids = self._bm25_tokenizer.tokenize([text], update_vocab=False, return_as="ids", show_progress=False)
        if k <= 0 or not ids or not ids[0]:
            return []
        # Scoring one query directly: bm25s.retrieve would start a thread pool for every call.
        scores = self._bm25.get_scores_from_ids(ids[0])
        if restrict is not None:
            # Ranked among the allowed chunks only: their scores, as a slice of the whole (the scoring
            # itself walks the query terms' postings, whatever the filter).
            return _top_positive(scores[restrict], k, restrict)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(c), float(scores[c])) for c in top if scores[c] > 0]

    def _allowed_ids(self, allowed: np.ndarray) -> np.ndarray | None:
        """`allowed` as distinct int64 chunk ids, or None when it holds every chunk (the unrestricted
        search is the same search, and faster); IndexError for an id outside 0..chunk_count-1."""
        ids = self._chunk_ids(np.ascontiguousarray(allowed, dtype=np.int64).reshape(-1))
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            ids = np.unique(ids)
        return None if len(ids) == len(self._chunks) else ids

    def chunk_vectors(self, chunk_ids: Sequence[int]) -> np.ndarray:
        ids = self._chunk_ids(np.asarray(chunk_ids, dtype=np.int64).reshape(-1))
        vectors: np.ndarray = self._chunk_vectors[ids]
        return vectors

    def _chunk_ids(self, ids: np.ndarray) -> np.ndarray:
        """`ids`, or an IndexError when one is not in 0..chunk_count-1."""
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self._chunks)):
            raise IndexError(f"chunk ids out of 0..{len(self._chunks) - 1} in version {self.version_id}")
        return ids

    def sentence_vectors_of(self, chunk_id: int) -> np.ndarray:
        self._chunk_id(chunk_id)
        rows = self._sentence_vectors.rows(int(self._offsets[chunk_id]), int(self._offsets[chunk_id + 1]))
        if rows.dtype != np.float32:  # float16 on disk: scores are computed in float32
            return _read_only(rows.astype(np.float32))
        return rows if not rows.flags.writeable else _read_only(rows.view())

    def word_frequencies(self) -> WordFrequencies | None:
        return self._word_frequencies


def faiss_search_among(
    index: Any, query: np.ndarray, k: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's search of `query` (shape (1, d)) for the best min(k, len(allowed)) of the rows `allowed`
    (distinct int64 ids within the index), as FAISS returns them: (scores, ids), each of shape (1, k').

    Restricted by an IDSelector in the search parameters. On a flat index an IDSelectorArray makes FAISS
    compute the inner products of the listed rows only (knn_inner_products_by_idx), so the cost follows
    len(allowed), not the index; a bitmap or a hash set would be tested on every row. Any other index
    (IVF, HNSW) asks about each candidate it visits, which a bitmap answers in constant time (an array
    would be searched linearly)."""
    import faiss

    lib: Any = faiss  # its stubs lack the Python wrappers: selectors from numpy arrays, keyword parameters
    k = min(k, len(allowed))
    if k <= 0:
        return np.zeros((1, 0), np.float32), np.zeros((1, 0), np.int64)
    # The selector refers to the array's memory (`allowed` or `bits`), which outlives the search.
    if isinstance(index, lib.IndexFlat):
        selector = lib.IDSelectorArray(allowed)
    else:
        bits = np.zeros((index.ntotal + 7) // 8, np.uint8)
        np.bitwise_or.at(bits, allowed >> 3, (1 << (allowed & 7)).astype(np.uint8))
        selector = lib.IDSelectorBitmap(bits)
    scores, ids = index.search(query, k, params=lib.SearchParameters(sel=selector))
    return scores, ids


def _top_positive(scores: np.ndarray, k: int, ids: np.ndarray) -> list[tuple[int, float]]:
    """The best k of `scores` above 0, best first, as (ids[row], score)."""
    k = min(k, len(scores))
    if k <= 0:
        return []
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(ids[row]), float(scores[row])) for row in top if scores[row] > 0]


# --- checks at load: a damaged version is refused before it is served -------------------------


def _damaged(version: st.Version, problem: str) -> st.StoreError:
    return st.version_damaged(version.store, version.version_id, problem)


def _check_records(version: st.Version) -> None:
    chunks, documents, counts = version.chunks, version.documents, version.manifest.counts
    if (counts.documents, counts.chunks) != (len(documents), len(chunks)):
        raise _damaged(
            version,
            f"its manifest counts {counts.documents} documents and {counts.chunks} chunks, "
            f"it holds {len(documents)} and {len(chunks)}",
        )
    # Chunk ids are rows and every chunk's document exists (open_version refuses a version otherwise);
    # the spans are checked here, over the columns at once.
    if not len(chunks):
        return
    spans = chunks.spans
    limit = documents.chars[chunks.document_rows]
    outside = np.flatnonzero((spans[:, 0] < 0) | (spans[:, 0] > spans[:, 1]) | (spans[:, 1] > limit))
    if len(outside):
        row = int(outside[0])
        start, end = spans[row].tolist()
        raise _damaged(version, f"chunk {row} spans [{start}, {end}) outside its document")


def _check_faiss(version: st.Version, index: Any) -> None:
    expected = (len(version.chunks), version.manifest.model.dimension)
    if (index.ntotal, index.d) != expected:
        raise _damaged(
            version,
            f"index.faiss holds {index.ntotal} vectors of {index.d} dimensions, "
            f"expected {expected[0]} (one per chunk) of {expected[1]}",
        )


def _check_bm25(version: st.Version, bm25: Any) -> None:
    scores = getattr(bm25, "scores", None)
    indexed = scores.get("num_docs") if isinstance(scores, dict) else None
    if indexed is not None and int(indexed) != len(version.chunks):
        raise _damaged(version, f"the BM25 index holds {indexed} texts for {len(version.chunks)} chunks")


def _stored_vectors(index: Any, dimension: int) -> np.ndarray:
    """The chunk vectors as a read-only view of a flat FAISS index's own storage (the float32 rows as
    added, the reader holding the index): no second copy. Another kind of index: reconstructed."""
    import faiss

    if not index.ntotal:
        return np.zeros((0, dimension), np.float32)
    if isinstance(index, faiss.IndexFlat):
        rows = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d)
        return _read_only(rows.reshape(index.ntotal, index.d))
    return _read_only(index.reconstruct_n(0, index.ntotal))


def _check_sentence_vectors(version: st.Version, vectors: np.ndarray, sentences: int) -> None:
    dimension = version.manifest.model.dimension
    stored = version.manifest.sentence_vectors_dtype
    if vectors.dtype != np.dtype(stored):
        raise _damaged(version, f"sentences.npy holds {vectors.dtype} vectors, its manifest says {stored}")
    if vectors.ndim != 2 or vectors.shape[1] != dimension:
        raise _damaged(version, f"sentences.npy has shape {vectors.shape}, not (rows, {dimension})")
    if len(vectors) != sentences:
        raise _damaged(
            version,
            f"sentences.npy has {len(vectors)} sentence vectors but its chunks hold {sentences} "
            "sentences, so the sentence-row offsets do not match the chunks",
        )
    if version.manifest.counts.sentences != sentences:
        raise _damaged(
            version,
            f"its manifest counts {version.manifest.counts.sentences} sentences, its chunks {sentences}",
        )


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
