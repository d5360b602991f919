"""A store version loaded for serving. Everything comes through indexer.reader's `StoreReader`
interface; this module adds what the service derives from it (the chunks' idf, from the word counts
the version stores, and chunks per document)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from indexer import store as st
from indexer.filters import ChunkFilter
from indexer.reader import StoreReader, open_reader
from service.text import inverse_document_frequency

log = logging.getLogger("ragqa.service")


class LoadedIndex:
    """One store version as the service uses it; immutable, shared by the requests that started on it."""

    def __init__(self, reader: StoreReader) -> None:
        self._reader = reader
        # over the chunks' texts, for the lexical part of answering
        self.idf: dict[str, float] = _idf(reader)

    @classmethod
    def load(
        cls,
        store: str | Path,
        model_name: str,
        version_id: str | None = None,
        previous: LoadedIndex | None = None,
    ) -> LoadedIndex:
        """The live version of `store` (or `version_id`); a version built with another model than
        `model_name` is a ModelMismatchError, a damaged one a StoreError. `previous`: the index being
        replaced, whose reader shares what the two versions have in common (its unchanged segments)."""
        reader = open_reader(
            store,
            model_name=model_name,
            version_id=version_id,
            previous=previous._reader if previous else None,
        )
        return cls(reader)

    @property
    def version_id(self) -> str:
        return self._reader.version_id

    # --- lookups ----------------------------------------------------------------------------

    def chunks_of(self, doc_id: str) -> int:
        """How many chunks the document has (0 for none)."""
        return self._reader.chunks_of(doc_id)

    @property
    def model_name(self) -> str:
        return self._reader.manifest.model.name

    @property
    def model(self) -> st.ModelSpec:
        """The model the version's vectors come from (name, encoder, weights digest)."""
        return self._reader.manifest.model

    @property
    def document_count(self) -> int:
        return self._reader.document_count

    @property
    def chunk_count(self) -> int:
        return self._reader.chunk_count

    def documents(self, first: int = 0, stop: int | None = None) -> Iterator[st.DocumentRecord]:
        return self._reader.documents(first, stop)

    def find_document(self, doc_id: str) -> st.DocumentRecord | None:
        return self._reader.find_document(doc_id)

    def chunk_records(self) -> Iterator[st.ChunkRecord]:
        return self._reader.chunk_records()

    def chunk(self, chunk_id: int) -> st.ChunkRecord:
        return self._reader.chunk(chunk_id)

    def chunk_text(self, chunk_id: int) -> str:
        return self._reader.chunk_text(chunk_id)

    def document(self, doc_id: str) -> st.DocumentRecord:
        return self._reader.document(doc_id)

    def sentence_vectors_of(self, chunk_id: int) -> np.ndarray:
        return self._reader.sentence_vectors_of(chunk_id)

    # --- retrieval --------------------------------------------------------------------------

    def matching_chunks(self, chunk_filter: ChunkFilter) -> np.ndarray | None:
        """The chunk ids a filter allows (None: no condition, every chunk), for `allowed` below."""
        return self._reader.matching_chunks(chunk_filter)

    def dense(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The k chunks nearest the vector (among `allowed`, when given), with their cosine, best first."""
        return self._reader.dense(vector, k, allowed)

    def lexical(self, text: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The k chunks (among `allowed`, when given) with the best BM25 score (above 0) for the text,
        best first."""
        return self._reader.lexical(text, k, allowed)

    def cosines(self, vector: np.ndarray, chunk_ids: list[int]) -> np.ndarray:
        return self._reader.chunk_vectors(chunk_ids) @ vector

    def best_sentence_cosine(self, vector: np.ndarray, chunk_id: int) -> float:
        sentences = self.sentence_vectors_of(chunk_id)
        return float((sentences @ vector).max()) if len(sentences) else -1.0


def _idf(reader: StoreReader) -> dict[str, float]:
    """The idf of the answer step's words over every chunk's text: from the counts the version stores
    (made when it was written), or counted now over every chunk text for a version without them."""
    stored = reader.word_frequencies()
    if stored is not None:
        return stored.idf()
    started = time.perf_counter()
    idf = inverse_document_frequency(reader.chunk_text(c.chunk_id) for c in reader.chunk_records())
    log.info(
        "index.idf_counted_at_load",
        extra={
            "version": reader.version_id,
            "chunks": reader.chunk_count,
            "seconds": round(time.perf_counter() - started, 3),
            "why": "the version stores no word counts (written before they were stored, or with other"
            " words): counted over every chunk text; ragqa-index --rebuild stores them",
        },
    )
    return idf
