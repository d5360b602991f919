"""Retrieval filters: `ChunkFilter`, the conditions a search's chunks must meet (the service builds it
from a request's `filter`), and `FilterLookup`, which resolves one into chunk ids over one store
version's records with lookup structures built once, on first use, instead of a scan of every chunk
per request.

A filter restricts a search *before* it ranks (the reader's `dense`/`lexical` take the resolved ids as
`allowed`), so the best k chunks among those allowed come back: a filter never empties a top-k that
exists, as filtering the unfiltered top-k afterwards would.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer import store as st

# A metadata value a filter may name: a JSON scalar.
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class ChunkFilter:
    """Which chunks a search may return: those of documents that meet every condition given (AND). A
    condition left out (None, or no metadata fields) does not restrict; a filter without any condition
    allows every chunk.

    - `doc_ids`: the chunk's document id is one of these (an id no document has matches nothing).
    - `source_prefix`: the document's `source` starts with this string (case-sensitive, as stored).
    - `metadata`: for each field, the document's `metadata[field]` equals one of the values given
      (one value: equality; several: one-of). Equality is JSON's: a string matches only a string, a
      boolean only a boolean, numbers by value (1 matches 1.0), None a field whose value is null. A
      document whose field holds a list matches when one of its scalar elements does; a document
      without the field, or whose field holds an object, never matches.
    """

    doc_ids: tuple[str, ...] | None = None
    source_prefix: str | None = None
    metadata: Mapping[str, tuple[Scalar, ...]] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        """True when the filter sets no condition (it allows every chunk)."""
        return self.doc_ids is None and self.source_prefix is None and not self.metadata


def value_key(value: Any) -> tuple[str, Any] | None:
    """The key under which a JSON scalar is looked up: equal JSON values, equal keys (True and 1 are
    not equal in JSON, as they are in Python). None for a value that is not a scalar."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)  # 1 == 1.0 and hash(1) == hash(1.0): they share a key
    if isinstance(value, str):
        return ("string", value)
    return None


class FilterLookup:
    """Resolves `ChunkFilter`s over one immutable store version: each document's chunk id range (a
    document's chunks are consecutive), the sources in sorted order (a prefix is a range of them) and
    metadata field → value → documents. Built once, on the first filter, from one pass over the
    documents and one over the chunks; safe to share between threads."""

    def __init__(
        self,
        documents: Iterable[st.DocumentRecord | st.DocumentFacts] | None,
        chunks: Iterable[st.ChunkRecord] | None,
    ) -> None:
        """`documents` and `chunks` are iterated (once) on the first `matching_chunks` call, not here."""
        self._sources_in = (documents, chunks)
        self._lock = threading.Lock()
        self._built = False
        self._position: dict[str, int] = {}  # doc_id → the document's position in document order
        self._first = np.zeros(0, np.int64)  # position → its first chunk id
        self._stop = np.zeros(0, np.int64)  # position → one past its last chunk id
        self._sources: list[str] = []  # every document's source, sorted
        self._source_positions = np.zeros(0, np.int64)  # ... and the position of its document
        self._metadata: dict[str, dict[tuple[str, Any], np.ndarray]] = {}  # field → key → positions

    def matching_chunks(self, chunk_filter: ChunkFilter) -> np.ndarray | None:
        """See `StoreReader.matching_chunks`: None for a filter without conditions, else the ids of the
        chunks it allows, ascending, distinct, int64 (empty when none)."""
        if chunk_filter.is_empty:
            return None
        self._build()
        positions: np.ndarray | None = None
        for allowed in self._conditions(chunk_filter):
            if positions is not None:
                allowed = np.intersect1d(positions, allowed, assume_unique=True)
            positions = allowed
            if not len(positions):
                break
        assert positions is not None
        return self._chunk_ids(positions)

    # --- resolving --------------------------------------------------------------------------

    def _conditions(self, chunk_filter: ChunkFilter) -> Iterator[np.ndarray]:
        """For each condition, the positions of the documents meeting it: distinct, sorted."""
        if chunk_filter.doc_ids is not None:
            found = [self._position[d] for d in set(chunk_filter.doc_ids) if d in self._position]
            yield np.sort(np.asarray(found, np.int64))
        if chunk_filter.source_prefix is not None:
            low, high = self._prefix_range(chunk_filter.source_prefix)
            yield np.sort(self._source_positions[low:high])
        for name, values in chunk_filter.metadata.items():
            by_value = self._metadata.get(name, {})
            keys = {value_key(v) for v in values}
            parts = [by_value[key] for key in keys if key is not None and key in by_value]
            yield np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def _prefix_range(self, prefix: str) -> tuple[int, int]:
        """Rows of the sorted sources that start with `prefix`: from the first >= prefix to the first >=
        the prefix with its last character raised by one."""
        low = bisect.bisect_left(self._sources, prefix)
        if not prefix:
            return 0, len(self._sources)
        last = ord(prefix[-1])
        if last == 0x10FFFF:  # no character above it: walk (only sources holding that character get here)
            high = low
            while high < len(self._sources) and self._sources[high].startswith(prefix):
                high += 1
            return low, high
        return low, bisect.bisect_left(self._sources, prefix[:-1] + chr(last + 1), lo=low)

    def _chunk_ids(self, positions: np.ndarray) -> np.ndarray:
        """The chunk ids of these documents, ascending."""
        first, stop = self._first[positions], self._stop[positions]
        lengths = stop - first
        total = int(lengths.sum())
        if not total:
            return np.zeros(0, np.int64)
        # The ranges [first, stop) put end to end without a Python loop: each id is its document's
        # first id plus its offset within the document.
        owner = np.repeat(np.arange(len(positions)), lengths)
        starts = np.cumsum(lengths) - lengths
        ids = first[owner] + (np.arange(total, dtype=np.int64) - starts[owner])
        if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            ids.sort()
        ids.flags.writeable = False
        return ids

    # --- building, once ---------------------------------------------------------------------

    def _build(self) -> None:
        if self._built:
            return
        with self._lock:
            if self._built:
                return
            documents, chunks = self._sources_in
            assert documents is not None and chunks is not None
            self._build_documents(documents)
            self._build_chunks(chunks)
            self._sources_in = (None, None)
            self._built = True

    def _build_documents(self, documents: Iterable[st.DocumentRecord | st.DocumentFacts]) -> None:
        sources: list[tuple[str, int]] = []
        metadata: dict[str, dict[tuple[str, Any], list[int]]] = {}
        for position, document in enumerate(documents):
            self._position[document.doc_id] = position
            sources.append((document.source, position))
            for name, value in document.metadata.items():
                values = value if isinstance(value, list) else [value]
                keys = {value_key(v) for v in values}
                for key in keys:
                    if key is not None:
                        metadata.setdefault(name, {}).setdefault(key, []).append(position)
        sources.sort()
        self._sources = [source for source, _ in sources]
        self._source_positions = np.asarray([position for _, position in sources], np.int64)
        self._metadata = {
            name: {key: np.asarray(positions, np.int64) for key, positions in by_value.items()}
            for name, by_value in metadata.items()
        }

    def _build_chunks(self, chunks: Iterable[st.ChunkRecord]) -> None:
        count = len(self._position)
        first = np.zeros(count, np.int64)
        stop = np.zeros(count, np.int64)
        seen = np.zeros(count, bool)
        position, current = self._position, None
        for chunk in chunks:  # a document's chunks are consecutive: one range each
            if chunk.doc_id != current:
                current = chunk.doc_id
                at = position[current]
                if not seen[at]:
                    seen[at] = True
                    first[at] = chunk.chunk_id
            stop[at] = chunk.chunk_id + 1
        self._first, self._stop = first, stop
