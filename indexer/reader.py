"""The one read interface of a store version: `StoreReader`, the whole contract between a store backend
and the service, and `LocalStoreReader`, the backend that loads a version written by indexer.store.

A reader is one immutable version, held entirely in memory, and safe to use from several threads at
once. Chunks are numbered 0..chunk_count-1 (`chunk_id`); vectors are float32 rows of
`manifest.model.dimension` values, L2-normalised, so an inner product is a cosine.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer import store as st


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

    def documents(self) -> Iterator[st.DocumentRecord]:
        """Every document once, in the order the indexer wrote them (the same on every call)."""
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

    def dense(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The k chunks whose vectors have the highest inner product (cosine) with `vector`, as
        (chunk_id, cosine), best first (ties in no set order); all chunks when k exceeds chunk_count,
        [] when k <= 0. `vector` holds manifest.model.dimension values (any shape); another size is a
        ValueError."""
        ...

    def lexical(self, text: str, k: int) -> list[tuple[int, float]]:
        """The k chunks with the best BM25 score for `text`, as (chunk_id, score), best first (ties in
        no set order), and only those scoring above 0: fewer than k (or none) when fewer chunks share a
        term with the text; [] when k <= 0. The text is tokenized as manifest.index.lexical_tokenizer
        says."""
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


def open_reader(store: Path, model_name: str | None = None, version_id: str | None = None) -> StoreReader:
    """The live version of the store at `store` (or `version_id`), loaded and checked; with
    `model_name`, a version built with another model is a ModelMismatchError. NoVersionError when the
    store has no published version, StoreError when the version is damaged."""
    return LocalStoreReader.open(store, model_name, version_id)


class LocalStoreReader:
    """A version of a local store (indexer.store's files), wholly in memory: FAISS for dense search,
    bm25s for lexical search, the sentence vectors in one array."""

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
        self._offsets = _sentence_offsets(version.chunks)
        _check_sentence_vectors(version, sentence_vectors, int(self._offsets[-1]))
        self._version = version
        self._chunks = version.chunks
        self._documents = version.documents
        self._dimension = version.manifest.model.dimension
        self._faiss = faiss_index
        self._bm25 = bm25
        self._bm25_tokenizer = bm25_tokenizer
        self._sentence_vectors = _read_only(sentence_vectors)
        if faiss_index.ntotal:
            self._chunk_vectors = _read_only(faiss_index.reconstruct_n(0, faiss_index.ntotal))
        else:
            self._chunk_vectors = np.zeros((0, self._dimension), np.float32)

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

    def documents(self) -> Iterator[st.DocumentRecord]:
        return iter(self._documents.values())

    def chunk(self, chunk_id: int) -> st.ChunkRecord:
        if not 0 <= chunk_id < len(self._chunks):
            raise IndexError(f"no chunk {chunk_id} in version {self.version_id} ({len(self._chunks)} chunks)")
        return self._chunks[chunk_id]

    def chunk_text(self, chunk_id: int) -> str:
        chunk = self.chunk(chunk_id)
        return self._documents[chunk.doc_id].text[chunk.start : chunk.end]

    def chunk_records(self) -> Iterator[st.ChunkRecord]:
        return iter(self._chunks)

    # --- vectors and search -----------------------------------------------------------------

    def dense(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self._dimension:
            raise ValueError(f"a vector of {query.shape[1]} values; this version's are {self._dimension}")
        k = min(k, self._faiss.ntotal)
        if k <= 0:
            return []
        scores, ids = self._faiss.search(query, k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def lexical(self, text: str, k: int) -> list[tuple[int, float]]:
        ids = self._bm25_tokenizer.tokenize([text], update_vocab=False, return_as="ids", show_progress=False)
        if k <= 0 or not ids or not ids[0]:
            return []
        # Scoring one query directly: bm25s.retrieve would start a thread pool for every call.
        scores = self._bm25.get_scores_from_ids(ids[0])
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(c), float(scores[c])) for c in top if scores[c] > 0]

    def chunk_vectors(self, chunk_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self._chunks)):
            raise IndexError(f"chunk ids out of 0..{len(self._chunks) - 1} in version {self.version_id}")
        vectors: np.ndarray = self._chunk_vectors[ids]
        return vectors

    def sentence_vectors_of(self, chunk_id: int) -> np.ndarray:
        if not 0 <= chunk_id < len(self._chunks):
            raise IndexError(f"no chunk {chunk_id} in version {self.version_id} ({len(self._chunks)} chunks)")
        return self._sentence_vectors[self._offsets[chunk_id] : self._offsets[chunk_id + 1]]


# --- checks at load: a damaged version is refused before it is served -------------------------


def _damaged(version: st.Version, problem: str) -> st.StoreError:
    return st.StoreError(
        f"version {version.version_id} of {version.store} is damaged: {problem}. "
        f"Rebuild it: ragqa-index --rebuild --store {version.store} PATH..."
    )


def _check_records(version: st.Version) -> None:
    chunks, documents, counts = version.chunks, version.documents, version.manifest.counts
    if (counts.documents, counts.chunks) != (len(documents), len(chunks)):
        raise _damaged(
            version,
            f"its manifest counts {counts.documents} documents and {counts.chunks} chunks, "
            f"it holds {len(documents)} and {len(chunks)}",
        )
    for row, chunk in enumerate(chunks):
        if chunk.chunk_id != row:
            raise _damaged(version, f"chunk {chunk.chunk_id} is at row {row} of chunks.jsonl")
        document = documents.get(chunk.doc_id)
        if document is None:
            raise _damaged(version, f"chunk {row} belongs to an unknown document {chunk.doc_id!r}")
        if not 0 <= chunk.start <= chunk.end <= len(document.text):
            raise _damaged(version, f"chunk {row} spans [{chunk.start}, {chunk.end}) outside its document")


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


def _sentence_offsets(chunks: list[st.ChunkRecord]) -> np.ndarray:
    """Chunk i's sentence vectors are rows offsets[i]:offsets[i+1] of sentences.npy."""
    counts = np.array([len(c.sentences) for c in chunks], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _check_sentence_vectors(version: st.Version, vectors: np.ndarray, sentences: int) -> None:
    dimension = version.manifest.model.dimension
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
