"""The one read interface of a store version: `StoreReader`, the whole contract between a store backend
and the service, and `LocalStoreReader`, the backend that reads a commit of indexer.segments (or a
format-2 version written by indexer.store before segments).

A reader is one immutable version, safe to use from several threads at once. Chunk ids (`chunk_id`) are
distinct non-negative integers, ascending in `chunk_records` order: 0..chunk_count-1 in a version that
deleted nothing; a local store's deleted chunks keep their ids until a merge, so ids may skip. Vectors
are float32 rows of `manifest.model.dimension` values, L2-normalised, so an inner product is a cosine.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer import dense
from indexer import segments as sg
from indexer import store as st
from indexer.filters import ChunkFilter, FilterLookup
from indexer.lexical import LexicalIndex, LexicalSegment
from indexer.text import WordFrequencies, summed, without


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
        """How many chunks the version holds (deleted ones not counted)."""
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

    def chunks_of(self, doc_id: str) -> int:
        """How many chunks the document has (0 for an unknown id, or a document of white space)."""
        ...

    def chunk(self, chunk_id: int) -> st.ChunkRecord:
        """The chunk with this id; IndexError when the version holds no chunk with that id."""
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
        IndexError for an id beyond the version's ids. None searches every chunk."""
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
        (len(chunk_ids), dimension); IndexError for an id beyond the version's ids. Cosines with a
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


def open_reader(
    store: str | Path,
    model_name: str | None = None,
    version_id: str | None = None,
    previous: StoreReader | None = None,
) -> StoreReader:
    """The live version of the store `store` names (or `version_id`), loaded and checked: a folder is a
    local store, a Milvus setting (indexer.milvus_store.parse_location) a Milvus one. With `model_name`,
    a version built with another model is a ModelMismatchError. NoVersionError when the store has no
    published version, StoreError when the version is damaged, StoreUnavailableError when its engine
    does not answer. `previous`: the reader being replaced (a hot reload), whose parts the new one
    shares where they are the same (a local store's unchanged segments)."""
    location = _milvus(store)
    if location is not None:
        from indexer.milvus_store import open_milvus_reader

        return open_milvus_reader(location, model_name, version_id)
    return LocalStoreReader.open(
        Path(store), model_name, version_id, previous if isinstance(previous, LocalStoreReader) else None
    )


class VersionWatch:
    """Which version of a store is live, asked again at each `live()`: a local store's CURRENT, or the
    version a Milvus alias names (through one client, kept open between calls)."""

    def __init__(self, store: str | Path) -> None:
        self.store = store
        self._location = _milvus(store)
        self._client: Any = None

    def live(self) -> str | None:
        """The live version's id (None: nothing published yet); StoreUnavailableError when a Milvus
        engine does not answer."""
        if self._location is None:
            return st.current_version_id(Path(self.store))
        from indexer.milvus_store import live_version

        if self._client is None:
            self._client = self._location.guarded_client()
        return live_version(self._location, self._client)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _milvus(store: str | Path) -> Any:
    """The Milvus location a store setting names, None for a folder (Path: always a folder)."""
    if isinstance(store, Path):
        return None
    from indexer.milvus_store import parse_location

    return parse_location(store)


class Segment:
    """One segment of a local store, opened and checked: its records as columns (records/, mapped; the
    texts read on demand), its dense index (indexer.dense: exact or approximate by size; a flat index's
    own storage is also where chunk vectors are read), its BM25 index (indexer.lexical), its sentence
    vectors (read from sentences.npy a chunk at a time) and the answer step's word counts. Immutable:
    shared by the readers of every commit that lists it, so a hot reload opens only the new segments."""

    def __init__(self, version: st.Version, faiss_index: Any, lexical: LexicalSegment, sentences: np.ndarray):
        """Check the loaded parts against the version's records (StoreError when they disagree)."""
        _check_records(version)
        _check_faiss(version, faiss_index)
        _check_bm25(version, lexical)
        _check_sentence_vectors(version, sentences, int(version.chunks.sentence_offsets[-1]))
        self.version = version
        self.name = version.version_id
        self.documents = version.documents
        self.chunks = version.chunks
        self.word_counts = version.load_word_frequencies()
        self.faiss = faiss_index
        self.lexical = lexical
        self.sentence_offsets = version.chunks.sentence_offsets
        self.sentences = st.Rows(_read_only(sentences))  # from the file, a chunk at a time
        self.vectors = dense.stored_vectors(faiss_index)

    @classmethod
    def open(
        cls, store: Path, folder: Path, name: str, files: dict[str, sg.FileSum] | None = None
    ) -> Segment:
        """The segment in `folder`; with `files` (the commit's sums), every file is checked first."""
        if files:
            sg.verify_folder(folder, files, f"segment {name} of {store}")
        version = st.open_folder(store, folder, name)
        return cls(version, version.load_faiss(), version.load_bm25(), version.load_sentence_vectors())

    def __len__(self) -> int:
        return len(self.chunks)

    @cached_property
    def filter_lookup(self) -> FilterLookup:
        """Built on the first filter (one pass over the documents and one over the chunks), then kept."""
        return FilterLookup(self.documents.facts(), iter(self.chunks))

    @cached_property
    def chunks_per_row(self) -> np.ndarray:
        """Each document row's number of chunks (counted once, on first use)."""
        return np.bincount(self.chunks.document_rows, minlength=len(self.documents))

    def sentence_vectors_of(self, local: int) -> np.ndarray:
        rows = self.sentences.rows(int(self.sentence_offsets[local]), int(self.sentence_offsets[local + 1]))
        if rows.dtype != np.float32:  # float16 on disk: scores are computed in float32
            return _read_only(rows.astype(np.float32))
        return rows if not rows.flags.writeable else _read_only(rows.view())


@dataclass(frozen=True)
class _Placed:
    """A segment as one commit places it: its first chunk id, and what the commit deleted of it."""

    segment: Segment
    base: int  # the global id of its chunk 0
    deleted_rows: np.ndarray  # sorted document rows
    deleted: np.ndarray  # sorted local chunk ids
    live_rows: np.ndarray | None  # the document rows not deleted (None: all)

    @cached_property
    def deleted_mask(self) -> np.ndarray | None:
        if not len(self.deleted):
            return None
        mask = np.zeros(len(self.segment), bool)
        mask[self.deleted] = True
        return mask

    @cached_property
    def live_chunks(self) -> np.ndarray:
        return (
            np.flatnonzero(~self.deleted_mask)
            if self.deleted_mask is not None
            else np.arange(len(self.segment))
        )

    def is_live_row(self, row: int) -> bool:
        return not len(self.deleted_rows) or not _contains(self.deleted_rows, row)

    @property
    def live_documents(self) -> int:
        return len(self.segment.documents) if self.live_rows is None else len(self.live_rows)


def _contains(sorted_ids: np.ndarray, value: int) -> bool:
    at = int(np.searchsorted(sorted_ids, value))
    return at < len(sorted_ids) and int(sorted_ids[at]) == value


DELETED_OVERFETCH = 1024  # deleted chunks in a segment up to which a search asks for k + that many


class LocalStoreReader:
    """A commit of a local store (indexer.segments): its segments in order, chunk ids running on from
    one segment to the next (a segment's deleted chunks keep their ids, never returned). Searches ask
    every segment and keep the best; lexical scores use corpus-level statistics (indexer.lexical)."""

    def __init__(self, commit: sg.Commit, placed: list[_Placed]) -> None:
        self._commit = commit
        self._placed = placed
        self._bases = np.array([p.base for p in placed], np.int64)
        self._base_list = [p.base for p in placed]
        self._limit = placed[-1].base + len(placed[-1].segment) if placed else 0
        manifest = commit.manifest
        self._dimension = manifest.model.dimension
        self._document_count = sum(p.live_documents for p in placed)
        self._chunk_count = sum(len(p.segment) - len(p.deleted) for p in placed)
        self._document_starts = np.cumsum([0] + [p.live_documents for p in placed])
        deleted = [p.deleted + p.base for p in placed if len(p.deleted)]
        self._lexical = LexicalIndex(
            [p.segment.lexical for p in placed],
            [p.base for p in placed],
            np.concatenate(deleted) if deleted else None,
        )
        self._word_frequencies = _word_frequencies(placed)

    @classmethod
    def open(
        cls,
        store: Path,
        model_name: str | None = None,
        version_id: str | None = None,
        previous: LocalStoreReader | None = None,
    ) -> LocalStoreReader:
        """See `open_reader`."""
        commit = sg.read_commit(store, version_id)
        if model_name is not None:
            st.check_model(store, commit.manifest, model_name)
        known = {p.segment.name: p.segment for p in previous._placed} if previous is not None else {}
        placed: list[_Placed] = []
        base = 0
        for entry in commit.segments:
            segment = known.get(entry.name)
            if segment is None:
                segment = Segment.open(store, commit.folder(store, entry), entry.name, entry.files)
            if (len(segment.documents), len(segment)) != (entry.documents, entry.chunks):
                raise st.version_damaged(
                    store,
                    commit.version,
                    f"segment {entry.name} holds {len(segment.documents)} documents and {len(segment)} "
                    f"chunks, its commit says {entry.documents} and {entry.chunks}",
                )
            rows = sg.read_deletions(store, commit, entry)
            chunks = sg.deleted_chunks(segment.chunks.document_rows, rows)
            if entry.deletions is not None and len(chunks) != entry.deletions.chunks:
                raise st.version_damaged(
                    store, commit.version, f"the deletions of segment {entry.name} do not match its chunks"
                )
            live_rows = None
            if len(rows):
                live = np.ones(entry.documents, bool)
                live[rows] = False
                live_rows = np.flatnonzero(live)
            placed.append(_Placed(segment, base, rows, chunks, live_rows))
            base += len(segment)
        return cls(commit, placed)

    # --- records ----------------------------------------------------------------------------

    @property
    def version_id(self) -> str:
        return self._commit.version

    @property
    def manifest(self) -> st.Manifest:
        return self._commit.manifest

    @property
    def segment_names(self) -> list[str]:
        """The commit's segments, in order (what a reload reopened or shared)."""
        return [p.segment.name for p in self._placed]

    @property
    def document_count(self) -> int:
        return self._document_count

    @property
    def chunk_count(self) -> int:
        return self._chunk_count

    def _find(self, doc_id: str) -> tuple[_Placed, int] | None:
        for placed in reversed(self._placed):  # a document lives once; the newest segment first
            row = placed.segment.documents.row(doc_id)
            if row is not None and placed.is_live_row(row):
                return placed, row
        return None

    def document(self, doc_id: str) -> st.DocumentRecord:
        found = self._find(doc_id)
        if found is None:
            raise KeyError(f"no document with id {doc_id!r} in version {self.version_id}")
        return found[0].segment.documents.record(found[1])

    def find_document(self, doc_id: str) -> st.DocumentRecord | None:
        found = self._find(doc_id)
        return None if found is None else found[0].segment.documents.record(found[1])

    def chunks_of(self, doc_id: str) -> int:
        found = self._find(doc_id)
        return 0 if found is None else int(found[0].segment.chunks_per_row[found[1]])

    def documents(self, first: int = 0, stop: int | None = None) -> Iterator[st.DocumentRecord]:
        first, stop, _ = slice(first, stop).indices(self._document_count)
        for n, placed in enumerate(self._placed):
            start, end = int(self._document_starts[n]), int(self._document_starts[n + 1])
            low, high = max(first, start) - start, min(stop, end) - start
            if low >= high:
                continue
            if placed.live_rows is None:
                yield from placed.segment.documents.records(low, high)
            else:
                for row in placed.live_rows[low:high].tolist():
                    yield placed.segment.documents.record(row)

    def _locate(self, chunk_id: int) -> tuple[_Placed, int]:
        """The chunk's segment and its row there; IndexError for no live chunk with that id."""
        if 0 <= chunk_id < self._limit:
            placed = self._placed[bisect.bisect_right(self._base_list, chunk_id) - 1]
            local = chunk_id - placed.base
            mask = placed.deleted_mask
            if mask is None or not mask[local]:
                return placed, local
        raise IndexError(f"no chunk {chunk_id} in version {self.version_id}")

    def chunk(self, chunk_id: int) -> st.ChunkRecord:
        placed, local = self._locate(chunk_id)
        record = placed.segment.chunks[local]
        return dataclasses.replace(record, chunk_id=chunk_id) if placed.base else record

    def chunk_text(self, chunk_id: int) -> str:
        placed, local = self._locate(chunk_id)
        return placed.segment.chunks.text(local)

    def chunk_records(self) -> Iterator[st.ChunkRecord]:
        for placed in self._placed:
            yield from placed.segment.chunks.records(placed.base, placed.deleted)

    # --- vectors and search -----------------------------------------------------------------

    def matching_chunks(self, chunk_filter: ChunkFilter) -> np.ndarray | None:
        if chunk_filter.is_empty:
            return None
        parts = []
        for placed in self._placed:
            local = placed.segment.filter_lookup.matching_chunks(chunk_filter)
            assert local is not None
            if placed.deleted_mask is not None:
                local = local[~placed.deleted_mask[local]]
            parts.append(local + placed.base)
        ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        ids.flags.writeable = False
        return ids

    def dense(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self._dimension:
            raise ValueError(f"a vector of {query.shape[1]} values; this version's are {self._dimension}")
        if k <= 0:
            return []
        split = None if allowed is None else self._split(self._allowed_ids(allowed))
        found: list[tuple[int, float]] = []
        for n, placed in enumerate(self._placed):
            among = None if split is None else split[n]
            if among is not None and not len(among):
                continue
            if among is None and len(placed.deleted) > DELETED_OVERFETCH:
                among = placed.live_chunks
            extra = len(placed.deleted) if among is None else 0
            scores, ids = dense.search(placed.segment.faiss, query, k + extra, among)
            mask = placed.deleted_mask
            for i, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True):
                if i >= 0 and (mask is None or not mask[i]):
                    found.append((placed.base + i, float(score)))
        found.sort(key=lambda pair: -pair[1])
        return found[:k]

    def _split(self, ids: np.ndarray) -> list[np.ndarray]:
        """Sorted global ids as each segment's local ids (its deleted chunks left out)."""
        cuts = np.searchsorted(ids, np.append(self._bases, self._limit))
        parts = []
        for n, placed in enumerate(self._placed):
            local = ids[cuts[n] : cuts[n + 1]] - placed.base
            if len(placed.deleted) and len(local):
                local = local[~placed.deleted_mask[local]]  # type: ignore[index]
            parts.append(local)
        return parts

    def lexical(self, text: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        return self._lexical.search(text, k, None if allowed is None else self._allowed_ids(allowed))

    def _allowed_ids(self, allowed: np.ndarray) -> np.ndarray:
        """`allowed` as sorted distinct int64 chunk ids; IndexError for an id outside the version."""
        ids = self._chunk_ids(np.ascontiguousarray(allowed, dtype=np.int64).reshape(-1))
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            ids = np.unique(ids)
        return ids

    def chunk_vectors(self, chunk_ids: Sequence[int]) -> np.ndarray:
        ids = self._chunk_ids(np.asarray(chunk_ids, dtype=np.int64).reshape(-1))
        if len(self._placed) == 1:
            vectors: np.ndarray = self._placed[0].segment.vectors[ids]
            return vectors
        out = np.empty((len(ids), self._dimension), np.float32)
        owner = np.searchsorted(self._bases, ids, side="right") - 1
        for n in np.unique(owner).tolist():
            rows = owner == n
            placed = self._placed[n]
            out[rows] = placed.segment.vectors[ids[rows] - placed.base]
        return out

    def _chunk_ids(self, ids: np.ndarray) -> np.ndarray:
        """`ids`, or an IndexError when one is outside the version's ids."""
        if len(ids) and (ids.min() < 0 or ids.max() >= self._limit):
            raise IndexError(f"chunk ids out of 0..{self._limit - 1} in version {self.version_id}")
        return ids

    def sentence_vectors_of(self, chunk_id: int) -> np.ndarray:
        placed, local = self._locate(chunk_id)
        return placed.segment.sentence_vectors_of(local)

    def word_frequencies(self) -> WordFrequencies | None:
        return self._word_frequencies


def _word_frequencies(placed: list[_Placed]) -> WordFrequencies | None:
    """The segments' word counts summed, less the words of their deleted chunks; None when a segment
    has none (the service then counts them itself)."""
    if any(p.segment.word_counts is None for p in placed):
        return None
    if len(placed) == 1 and not len(placed[0].deleted):
        return placed[0].segment.word_counts
    parts = []
    for p in placed:
        stored = p.segment.word_counts
        assert stored is not None
        deleted = (p.segment.chunks.text(local) for local in p.deleted.tolist())
        parts.append(without(stored, deleted) if len(p.deleted) else stored)
    return summed(parts)


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


def _check_bm25(version: st.Version, bm25: LexicalSegment) -> None:
    indexed = bm25.size
    if indexed != len(version.chunks):
        raise _damaged(version, f"the BM25 index holds {indexed} texts for {len(version.chunks)} chunks")


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
