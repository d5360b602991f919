"""Resolving retrieval filters (indexer.filters.FilterLookup) over made-up records, without a model: the
expectations come from ChunkFilter's contract. (FAISS's restricted search: tests/indexer/test_dense.py.)"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from indexer import store as st
from indexer.filters import ChunkFilter, FilterLookup, value_key

pytestmark = pytest.mark.unit

# doc_id → (source, metadata, number of chunks); in document order, chunks numbered in that order
DOCUMENTS: dict[str, tuple[str, dict[str, Any], int]] = {
    "a": ("/data/wiki/hr/leave.md", {"lang": "en", "year": 2023, "tags": ["hr", "policy"]}, 3),
    "b": ("/data/wiki/hr/pay.md", {"lang": "de", "year": 2024.0, "draft": True}, 2),
    "c": ("/data/wiki/it/vpn.md", {"lang": "en", "year": "2024", "draft": False, "owner": None}, 1),
    "d": ("/data/wiki/empty.md", {"lang": "en", "nested": {"x": 1}}, 0),  # no chunks (all white space)
    "e": ("/data/wiki/it\U0010ffff/odd.md", {"year": 1, "tags": []}, 2),
}


def records() -> tuple[list[st.DocumentRecord], list[st.ChunkRecord]]:
    documents: list[st.DocumentRecord] = []
    chunks: list[st.ChunkRecord] = []
    for doc_id, (source, metadata, count) in DOCUMENTS.items():
        documents.append(st.DocumentRecord(doc_id, doc_id.upper(), source, "text", metadata, "sha"))
        for _ in range(count):
            chunks.append(st.ChunkRecord(len(chunks), doc_id, 0, 4, (), "hash"))
    return documents, chunks


def lookup() -> FilterLookup:
    return FilterLookup(*records())


def chunks_of(*doc_ids: str) -> list[int]:
    _, chunks = records()
    return [c.chunk_id for c in chunks if c.doc_id in doc_ids]


def resolve(chunk_filter: ChunkFilter) -> list[int] | None:
    found = lookup().matching_chunks(chunk_filter)
    if found is None:
        return None
    assert found.dtype == np.int64 and list(found) == sorted(set(found.tolist())), "ascending, distinct"
    return [int(c) for c in found]


def test_a_filter_without_conditions_allows_everything() -> None:
    assert resolve(ChunkFilter()) is None
    assert ChunkFilter().is_empty and not ChunkFilter(doc_ids=()).is_empty


@pytest.mark.parametrize(
    ("chunk_filter", "documents"),
    [
        (ChunkFilter(doc_ids=("b",)), ["b"]),
        (ChunkFilter(doc_ids=("c", "a", "a", "nope")), ["a", "c"]),
        (ChunkFilter(doc_ids=("nope",)), []),
        (ChunkFilter(doc_ids=("d",)), []),  # a document without chunks
        (ChunkFilter(source_prefix="/data/wiki/hr/"), ["a", "b"]),
        (ChunkFilter(source_prefix="/data/wiki/"), ["a", "b", "c", "e"]),
        (ChunkFilter(source_prefix="/data/wiki/it"), ["c", "e"]),
        (ChunkFilter(source_prefix="/data/wiki/it\U0010ffff"), ["e"]),  # no character above its last
        (ChunkFilter(source_prefix="/data/wiki/hr/leave.md"), ["a"]),
        (ChunkFilter(source_prefix="/data/wiki/hr/leave.mdx"), []),
        (ChunkFilter(source_prefix="data/"), []),  # a prefix, not a substring
        (ChunkFilter(source_prefix="/DATA/"), []),  # case-sensitive
        (ChunkFilter(metadata={"lang": ("en",)}), ["a", "c"]),
        (ChunkFilter(metadata={"lang": ("en", "de")}), ["a", "b", "c"]),
        (ChunkFilter(metadata={"lang": ("fr",)}), []),
        (ChunkFilter(metadata={"year": (2024,)}), ["b"]),  # 2024 matches 2024.0, not "2024"
        (ChunkFilter(metadata={"year": ("2024",)}), ["c"]),
        (ChunkFilter(metadata={"year": (True,)}), []),  # true is not 1 in JSON
        (ChunkFilter(metadata={"year": (1.0,)}), ["e"]),
        (ChunkFilter(metadata={"draft": (True,)}), ["b"]),
        (ChunkFilter(metadata={"draft": (False,)}), ["c"]),
        (ChunkFilter(metadata={"draft": (0,)}), []),
        (ChunkFilter(metadata={"owner": (None,)}), ["c"]),  # null matches null, not a missing field
        (ChunkFilter(metadata={"tags": ("policy",)}), ["a"]),  # one element of a list field
        (ChunkFilter(metadata={"tags": (["hr"],)}), []),  # type: ignore[dict-item]  # not a scalar
        (ChunkFilter(metadata={"nested": (1,)}), []),
        (ChunkFilter(metadata={"lang": ("en",), "year": (2023, 2024)}), ["a"]),
        (
            ChunkFilter(doc_ids=("a", "b", "c"), source_prefix="/data/wiki/hr/", metadata={"lang": ("de",)}),
            ["b"],
        ),
        (ChunkFilter(doc_ids=("a",), source_prefix="/data/wiki/it/"), []),
    ],
)
def test_conditions(chunk_filter: ChunkFilter, documents: list[str]) -> None:
    assert resolve(chunk_filter) == chunks_of(*documents)


def test_values_compare_as_json() -> None:
    assert value_key(1) == value_key(1.0) != value_key(True)
    assert value_key("1") != value_key(1) and value_key(None) != value_key(False)
    assert value_key([1]) is None and value_key({"a": 1}) is None


def test_the_lookup_is_built_once_on_the_first_filter() -> None:
    documents, chunks = records()
    passes = {"documents": 0, "chunks": 0}

    def counted(name: str, items: list[Any]) -> Any:
        passes[name] += 1  # runs when the pass begins
        yield from items

    shared = FilterLookup(counted("documents", documents), counted("chunks", chunks))
    assert passes == {"documents": 0, "chunks": 0}, "nothing is read before a filter needs it"
    for chunk_filter, expected in [
        (ChunkFilter(source_prefix="/data/wiki/hr/"), chunks_of("a", "b")),
        (ChunkFilter(doc_ids=("e",)), chunks_of("e")),
        (ChunkFilter(metadata={"lang": ("en",)}), chunks_of("a", "c")),
        (ChunkFilter(source_prefix="/data/wiki/hr/"), chunks_of("a", "b")),
    ]:
        found = shared.matching_chunks(chunk_filter)
        assert found is not None and found.tolist() == expected
    assert passes == {"documents": 1, "chunks": 1}


def test_chunk_ids_are_read_only() -> None:
    found = lookup().matching_chunks(ChunkFilter(doc_ids=("a",)))
    assert found is not None and not found.flags.writeable
