"""A store version loaded for serving: documents, chunks, the FAISS index, the BM25 index and the
sentence vectors, all in memory, so that a request never touches the disk."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from indexer import store as st
from service.text import inverse_document_frequency

log = logging.getLogger("ragqa.service")


@dataclass
class LoadedIndex:
    version: st.Version
    faiss: Any
    chunk_vectors: np.ndarray  # the same vectors as the FAISS index, for scoring given chunks
    bm25: Any
    bm25_tokenizer: Any
    sentence_vectors: np.ndarray  # one row per (chunk, sentence), in chunk order
    sentence_offsets: np.ndarray  # chunk i's sentences are rows sentence_offsets[i]:sentence_offsets[i+1]
    idf: dict[str, float]  # over the chunks' texts, for the lexical part of answering

    @property
    def version_id(self) -> str:
        return self.version.version_id

    @classmethod
    def load(cls, store: Path, model_name: str, version_id: str | None = None) -> LoadedIndex:
        import bm25s
        from bm25s.tokenization import Tokenizer

        logging.getLogger("bm25s").setLevel(logging.WARNING)
        version = st.open_version(store, model_name=model_name, version_id=version_id)
        bm25 = bm25s.BM25.load(str(version.bm25_folder()))
        tokenizer = Tokenizer(stopwords="en", lower=True)
        tokenizer.load_vocab(str(version.bm25_folder()))
        counts = np.array([len(c.sentences) for c in version.chunks], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        sentence_vectors = version.load_sentence_vectors()
        if len(sentence_vectors) != offsets[-1]:
            raise st.StoreError(f"{version.path}: sentence vectors do not match the chunks' sentences")
        idf = inverse_document_frequency(version.chunk_text(c) for c in version.chunks)
        index = version.load_faiss()
        vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)
        return cls(version, index, vectors, bm25, tokenizer, sentence_vectors, offsets, idf)

    # --- lookups ----------------------------------------------------------------------------

    @cached_property
    def chunks_per_document(self) -> dict[str, int]:
        """doc_id → number of chunks, counted once per loaded version (not on every listing)."""
        counts: dict[str, int] = {}
        for chunk in self.version.chunks:
            counts[chunk.doc_id] = counts.get(chunk.doc_id, 0) + 1
        return counts

    @property
    def model_name(self) -> str:
        return str(self.version.manifest["model"]["name"])

    @property
    def document_count(self) -> int:
        return len(self.version.documents)

    @property
    def chunk_count(self) -> int:
        return len(self.version.chunks)

    def documents(self) -> Iterator[st.DocumentRecord]:
        return iter(self.version.documents.values())

    def find_document(self, doc_id: str) -> st.DocumentRecord | None:
        return self.version.documents.get(doc_id)

    def chunk_records(self) -> Iterator[st.ChunkRecord]:
        return iter(self.version.chunks)

    def chunk(self, chunk_id: int) -> st.ChunkRecord:
        return self.version.chunks[chunk_id]

    def chunk_text(self, chunk_id: int) -> str:
        return self.version.chunk_text(self.version.chunks[chunk_id])

    def document(self, doc_id: str) -> st.DocumentRecord:
        return self.version.documents[doc_id]

    def sentence_vectors_of(self, chunk_id: int) -> np.ndarray:
        return self.sentence_vectors[self.sentence_offsets[chunk_id] : self.sentence_offsets[chunk_id + 1]]

    # --- retrieval --------------------------------------------------------------------------

    def dense(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The k chunks nearest the vector, with their cosine, best first."""
        k = min(k, self.faiss.ntotal)
        if k == 0:
            return []
        scores, ids = self.faiss.search(vector.reshape(1, -1).astype(np.float32, copy=False), k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]

    def lexical(self, text: str, k: int) -> list[tuple[int, float]]:
        """The k chunks with the best BM25 score (above 0) for the text, best first."""
        ids = self.bm25_tokenizer.tokenize([text], update_vocab=False, return_as="ids", show_progress=False)
        if not ids or not ids[0]:
            return []
        # Scoring one query directly: bm25s.retrieve would start a thread pool for every call.
        scores = self.bm25.get_scores_from_ids(ids[0])
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(c), float(scores[c])) for c in top if scores[c] > 0]

    def cosines(self, vector: np.ndarray, chunk_ids: list[int]) -> np.ndarray:
        return self.chunk_vectors[chunk_ids] @ vector

    def best_sentence_cosine(self, vector: np.ndarray, chunk_id: int) -> float:
        sentences = self.sentence_vectors_of(chunk_id)
        return float((sentences @ vector).max()) if len(sentences) else -1.0
