"""The Milvus backend of the store (indexer.milvus_store) against the local one: a synthetic version
(random vectors, no model) published to milvus-lite, embedded in this process and as a `milvus-lite
server` process reached over gRPC, reads as the same version through `StoreReader` as the local store
written from the same data; publishing another version switches the
alias, an open reader keeps its version until `drop_unaliased` drops it, and never what an alias
names. Skipped when pymilvus/milvus-lite are not installed (the optional extra `milvus`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from indexer import milvus_store as ms
from indexer import store as st
from indexer.filters import ChunkFilter
from indexer.reader import StoreReader, open_reader
from service.processes import LiteServer
from tests.indexer.test_segments import PARTS, commit_of
from tests.indexer.test_store_format import TEXTS, synthetic
from tests.milvus_server import standalone_server, standalone_unavailable

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

V1, V2 = "20260101T000000000000Z", "20260102T000000000000Z"

# Metadata chosen where JSON's equality and Python's (or milvus-lite's `==` on JSON) differ.
METADATA: list[dict[str, object]] = [
    {"flag": True, "kind": "x"},
    {"flag": 1, "kind": ["x", "y"]},
    {"flag": 1.0, "kind": None},
    {"flag": "1", "kind": {"x": 1}},
    {"flag": False, "kind": ["y", 2]},
    {"n": 2.5, 'we"ird key/ü': "yes"},
]
SOURCES = {0: "docs/a_b%c/one", 1: "docs/aXb%c/two", 2: 'docs/a_b%c/"three"'}


def corpus() -> st.VersionData:
    """Short texts (PARTS), texts whose characters take 1-4 UTF-8 bytes (TEXTS), and a long document
    (cut into parts when PART_BYTES is small), with metadata and sources that test the filters."""
    texts = {**PARTS["a"], **PARTS["b"], **PARTS["c"], **TEXTS}
    texts["long"] = " ".join(
        f"Ünïcode sentence {n} of a long document about the pipeline." for n in range(12)
    )
    data = synthetic(texts, seed=3)
    documents = []
    for n, d in enumerate(data.documents):
        metadata = METADATA[n] if n < len(METADATA) else d.metadata
        source = SOURCES.get(n, d.source)
        documents.append(replace(d, metadata=metadata, source=source))
    return replace(data, documents=documents)


@dataclass
class Pair:
    local: StoreReader
    milvus: ms.MilvusStoreReader
    data: st.VersionData


CLUSTER = os.environ.get("RAGQA_TEST_MILVUS_URI")  # a real cluster, e.g. http://milvus.internal:19530
# Each engine a tier (tests/conftest.py): the real 2.3.5 server takes seconds a collection (create,
# flush, index, load), so its tests are slow; the tests that take no engine are unit tests.
ENGINES = [
    pytest.param("embedded", marks=pytest.mark.unit),
    pytest.param("server", marks=pytest.mark.unit),
    pytest.param("standalone", marks=pytest.mark.slow),
    pytest.param("cluster", marks=pytest.mark.unit),
]


@contextmanager
def engine(kind: str, root: Path) -> Iterator[str]:
    """A Milvus store setting of an engine of this kind, with an alias of its own:

    - embedded: milvus-lite in this process;
    - server: a `milvus-lite server` process, written to and read from over gRPC;
    - standalone: the real Milvus 2.3.5 standalone binary (PyPI `milvus==2.3.5`), as a process on
      127.0.0.1 (no BM25 there: the lexical tests skip on it);
    - cluster: RAGQA_TEST_MILVUS_URI (with RAGQA_MILVUS_TOKEN), skipped without it; what the tests
      write there (an alias and collections named ragqa_test_<random>_...) is dropped at the end."""
    if kind == "embedded":
        yield f"milvus-lite://{root / 'store.db'}?alias=ragqa"
    elif kind == "server":
        with LiteServer(root / "server-data") as server:
            yield server.store
    elif kind == "standalone":
        reason = standalone_unavailable()
        if reason is not None:
            pytest.skip(reason)
        with standalone_server(root / "standalone") as uri:
            yield "milvus://" + uri.removeprefix("http://") + "/ragqa"
    else:
        if not CLUSTER:
            pytest.skip("RAGQA_TEST_MILVUS_URI is not set: no Milvus cluster to test against")
        parts = urlsplit(CLUSTER)
        scheme = "milvus+tls" if parts.scheme == "https" else "milvus"
        alias = f"ragqa_test_{uuid.uuid4().hex[:8]}"
        yield f"{scheme}://{parts.netloc}/{alias}"
        location = ms.parse_location(f"{scheme}://{parts.netloc}/{alias}")
        assert location is not None
        client = location.client()
        try:  # every alias and collection the test made, and nothing else
            for name in client.list_aliases().get("aliases", []):
                if name.startswith(alias):
                    client.drop_alias(name)
            for name in client.list_collections():
                if name.startswith(alias + "_"):
                    client.drop_collection(name)
        finally:
            client.close()


@pytest.fixture(scope="module", params=ENGINES)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """The local store and the same version in Milvus (each engine of `engine`)."""
    root = tmp_path_factory.mktemp("milvus")
    with engine(request.param, root) as uri:
        yield from _pair(root, uri)


@pytest.fixture(params=ENGINES)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ms.MilvusLocation]:
    """An empty Milvus store of each engine, for the publishing tests."""
    with engine(request.param, tmp_path) as uri:
        found = ms.parse_location(uri)
        assert found is not None
        yield found


def _pair(root: Path, uri: str) -> Iterator[Pair]:
    data = corpus()
    commit_of(root / "local", [data])
    location = ms.parse_location(uri)
    assert location is not None
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ms, "PART_BYTES", 40)  # every long text in several parts
        ms.publish_version(location, data, V1)
    reader = ms.MilvusStoreReader.open(location, data.manifest.model.name)
    yield Pair(open_reader(root / "local"), reader, data)
    reader.close()


def needs_bm25(reader: ms.MilvusStoreReader) -> None:
    if reader.manifest.index.bm25 != ms.LEXICAL_INDEX:
        pytest.skip(f"BM25 and hybrid search: {ms.NO_BM25}")


@pytest.mark.unit
def test_parse_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ms.TOKEN_VARIABLE, "root:secret")
    assert ms.parse_location("/var/store") is None
    assert ms.parse_location("relative/store") is None
    lite = ms.parse_location("milvus-lite:///abs/file.db")
    assert lite == ms.MilvusLocation("ragqa", path="/abs/file.db")
    assert ms.parse_location("milvus-lite:///abs/file.db?alias=other") == ms.MilvusLocation(
        "other", path="/abs/file.db"
    )
    server = ms.parse_location("milvus://milvus.internal:19531/live")
    assert server is not None and (server.uri, server.alias, server.token) == (
        "http://milvus.internal:19531",
        "live",
        "root:secret",
    )
    assert "secret" not in repr(server)
    tls = ms.parse_location("milvus+tls://milvus.internal")
    assert tls is not None and (tls.uri, tls.alias) == ("https://milvus.internal:19530", "ragqa")
    assert tls.timeout == ms.CALL_TIMEOUT
    quick = ms.parse_location("milvus://host/live?timeout=2.5")
    assert quick is not None and (quick.alias, quick.timeout) == ("live", 2.5)
    for bad, says in [
        ("milvus://host/ragqa?timeout=0", "timeout"),
        ("milvus://host/ragqa?timeout=soon", "timeout"),
        ("milvus://host/ragqa?alias=x", "unknown options"),
        ("milvus://user:pw@host:19530/ragqa", "RAGQA_MILVUS_TOKEN"),
        ("milvus-lite://relative.db", "absolute"),
        ("milvus-lite:///abs/file.sqlite", ".db"),
        ("milvus://host/bad-alias", "alias"),
        ("postgres://host/db", "scheme"),
        ("milvus://host:notaport/x", "port"),
    ]:
        with pytest.raises(ValueError, match=says):
            ms.parse_location(bad)


def test_records_read_as_the_local_store(pair: Pair) -> None:
    local, milvus = pair.local, pair.milvus
    assert milvus.version_id == V1
    bm25 = milvus.manifest.index.bm25  # what the engine offers: Milvus 2.3 has no BM25
    assert bm25 in (ms.LEXICAL_INDEX, f"none: {ms.NO_BM25}")
    index = replace(local.manifest.index, dense=ms.DENSE_INDEX, bm25=bm25)
    assert milvus.manifest == replace(
        local.manifest, format=pair.data.manifest.format, version=V1, index=index
    )
    assert (milvus.document_count, milvus.chunk_count) == (local.document_count, local.chunk_count)
    assert list(milvus.documents()) == list(local.documents())
    assert list(milvus.documents(3, 7)) == list(local.documents(3, 7))
    assert list(milvus.documents(20, 1000)) == list(local.documents(20, 1000))
    for d in local.documents():
        assert milvus.document(d.doc_id) == d == milvus.find_document(d.doc_id)
        assert milvus.chunks_of(d.doc_id) == local.chunks_of(d.doc_id)
    assert milvus.document("long").text == pair.data.documents[-1].text  # joined from its parts
    assert milvus.find_document("nope") is None and milvus.chunks_of("nope") == 0
    with pytest.raises(KeyError):
        milvus.document('no"pe')
    assert list(milvus.chunk_records()) == list(local.chunk_records())
    for i in range(local.chunk_count):
        assert milvus.chunk(i) == local.chunk(i)
        assert milvus.chunk_text(i) == local.chunk_text(i)
    for bad in (-1, local.chunk_count):
        with pytest.raises(IndexError):
            milvus.chunk(bad)
        with pytest.raises(IndexError):
            milvus.chunk_text(bad)
    assert milvus.word_frequencies() == local.word_frequencies()


def test_reads_in_many_pages_read_the_same(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    local, milvus = pair.local, pair.milvus
    monkeypatch.setattr(ms, "PAGE_ROWS", 4)
    monkeypatch.setattr(ms, "ID_PAGE_ROWS", 3)
    assert list(milvus.documents()) == list(local.documents())
    assert list(milvus.documents(5, 9)) == list(local.documents(5, 9))
    assert list(milvus.chunk_records()) == list(local.chunk_records())
    ids = list(range(local.chunk_count))[::-1]
    np.testing.assert_array_equal(milvus.chunk_vectors(ids), local.chunk_vectors(ids))
    chunk_filter = ChunkFilter(source_prefix="folder/")
    assert milvus.matching_chunks(chunk_filter).tolist() == local.matching_chunks(chunk_filter).tolist()  # type: ignore[union-attr]


def test_it_is_a_store_reader_safe_across_threads(pair: Pair) -> None:
    reader: StoreReader = pair.milvus  # mypy checks every member against the Protocol
    query = pair.data.vectors[3]

    def ask(n: int) -> tuple[object, ...]:
        return (
            reader.dense(query, 5),
            reader.lexical("pipeline", 3),
            reader.chunk_text(n % reader.chunk_count),
        )

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(16)))
    assert all(a[:2] == answers[0][:2] for a in answers)
    assert answers[0][0][0][0] == 3  # type: ignore[index]


def test_vectors_and_dense_search(pair: Pair) -> None:
    local, milvus = pair.local, pair.milvus
    ids = [5, 0, 5, local.chunk_count - 1]
    np.testing.assert_array_equal(milvus.chunk_vectors(ids), local.chunk_vectors(ids))
    with pytest.raises(IndexError):
        milvus.chunk_vectors([local.chunk_count])
    for i in range(local.chunk_count):
        sentences = milvus.sentence_vectors_of(i)
        assert sentences.dtype == np.float32 and not sentences.flags.writeable
        np.testing.assert_array_equal(sentences, local.sentence_vectors_of(i))
    rng = np.random.default_rng(7)
    allowed = local.matching_chunks(ChunkFilter(doc_ids=("a1", "b2", "long")))
    assert allowed is not None
    for _ in range(3):
        query = rng.standard_normal(ms_dimension(local)).astype(np.float32)
        query /= np.linalg.norm(query)
        for k, among in [(5, None), (local.chunk_count + 10, None), (4, allowed), (100, allowed)]:
            expected, found = local.dense(query, k, among), milvus.dense(query, k, among)
            assert [i for i, _ in found] == [i for i, _ in expected]
            np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-5)
    assert milvus.dense(query, 0) == [] and milvus.dense(query, 3, np.zeros(0, np.int64)) == []
    with pytest.raises(ValueError):
        milvus.dense(query[:10], 3)
    with pytest.raises(IndexError):
        milvus.dense(query, 3, np.array([local.chunk_count]))


def ms_dimension(reader: StoreReader) -> int:
    return reader.manifest.model.dimension


@pytest.mark.parametrize(
    "chunk_filter",
    [
        ChunkFilter(doc_ids=("a1", "c0", "nope")),
        ChunkFilter(doc_ids=()),
        ChunkFilter(source_prefix="folder/b"),
        ChunkFilter(source_prefix="docs/a_b%c/"),  # _ and % taken literally
        ChunkFilter(source_prefix='docs/a_b%c/"'),
        ChunkFilter(source_prefix=""),
        ChunkFilter(metadata={"flag": (True,)}),  # not 1
        ChunkFilter(metadata={"flag": (1,)}),  # 1 and 1.0, not true, not "1"
        ChunkFilter(metadata={"flag": ("1", False)}),
        ChunkFilter(metadata={"kind": ("x",)}),  # a list matches by any element
        ChunkFilter(metadata={"kind": (None,)}),
        ChunkFilter(metadata={"kind": (2.0, "y")}),
        ChunkFilter(metadata={"n": (2.5,), "flag": (1,)}),
        ChunkFilter(metadata={"tags": ("ü",)}),
        ChunkFilter(metadata={'we"ird key/ü': ("yes",)}),
        ChunkFilter(metadata={"nested": (None,)}),  # an object never matches
        ChunkFilter(metadata={"absent": (1, None)}),
        ChunkFilter(doc_ids=("a0", "a1", "a2"), metadata={"kind": ("x",)}, source_prefix="docs/"),
    ],
)
def test_filters_match_the_local_store(pair: Pair, chunk_filter: ChunkFilter) -> None:
    expected = pair.local.matching_chunks(chunk_filter)
    found = pair.milvus.matching_chunks(chunk_filter)
    assert expected is not None and found is not None
    assert found.dtype == np.int64
    assert found.tolist() == expected.tolist()


def test_an_empty_filter_allows_everything(pair: Pair) -> None:
    assert pair.milvus.matching_chunks(ChunkFilter()) is None


def test_lexical_search(pair: Pair) -> None:
    local, milvus = pair.local, pair.milvus
    needs_bm25(milvus)
    compared = 0
    for query in ["pipeline valley", "emoji quoted", "İstanbul", "Charlie", "harbours alpha 3"]:
        expected, found = local.lexical(query, 5), milvus.lexical(query, 5)
        assert expected and found, query
        assert all(score > 0 for _, score in found)
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
        if len(expected) == 1 or expected[0][1] > expected[1][1]:  # a distinct best hit
            assert found[0][0] == expected[0][0], query
            compared += 1
    assert compared == 4
    assert milvus.lexical("the and of", 5) == [] == local.lexical("the and of", 5)  # stopwords only
    # Every chunk holding the word, among those allowed only.
    allowed = local.matching_chunks(ChunkFilter(doc_ids=("b1", "b3", "a2")))
    expected_ids = {i for i, _ in local.lexical("treaties", 50, allowed)}
    assert {i for i, _ in milvus.lexical("treaties", 50, allowed)} == expected_ids != set()
    assert milvus.lexical("zzzqx unheardof", 5) == [] == local.lexical("zzzqx unheardof", 5)
    assert milvus.lexical("pipeline", 0) == [] and milvus.lexical("pipeline", 5, np.zeros(0, np.int64)) == []


def test_publishing_switches_the_alias_and_old_versions_are_dropped(location: ms.MilvusLocation) -> None:
    with pytest.raises(st.NoVersionError):
        ms.MilvusStoreReader.open(location)
    v1, v2 = synthetic(PARTS["c"], seed=1), synthetic(PARTS["b"], seed=2)
    other = replace(location, alias=location.alias + "_x")  # another alias whose names start with this one's
    ms.publish_version(other, v1, "1")
    ms.publish_version(other, v1, "2")
    ms.publish_version(location, v1, V1)
    old = ms.MilvusStoreReader.open(location)
    with pytest.raises(st.ModelMismatchError):
        ms.MilvusStoreReader.open(location, "another/model")
    ms.publish_version(location, v2, V2)
    with pytest.raises(st.StoreError):
        ms.publish_version(location, v2, V2)  # a version is written once
    new = ms.MilvusStoreReader.open(location)
    assert (old.version_id, new.version_id) == (V1, V2)
    assert [d.doc_id for d in new.documents()] == [d.doc_id for d in v2.documents]
    assert [d.doc_id for d in old.documents()] == ["c0"] and old.chunk_text(0) == v1.bm25_texts[0]
    assert ms.drop_unaliased(location) == [V1]
    assert ms.drop_unaliased(location) == []
    assert new.document("b0").text == PARTS["b"]["b0"]  # the aliased version stays
    assert ms.MilvusStoreReader.open(location).version_id == V2
    assert ms.MilvusStoreReader.open(other).version_id == "2"
    assert ms.drop_unaliased(other) == ["1"]
    with pytest.raises(st.StoreUnavailableError):  # the old version's collections are gone
        old.chunk_vectors([0])  # (what it read before it may still answer from its cache)
    old.close()
    new.close()


@pytest.mark.unit
def test_a_failed_publish_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    location = ms.parse_location(f"milvus-lite://{tmp_path / 'store.db'}")
    assert location is not None
    monkeypatch.setattr(ms, "VARCHAR_MAX", 20)  # a chunk's text is now too long, found while writing
    with pytest.raises(st.StoreError, match="over 20 bytes"):
        ms.publish_version(location, synthetic(PARTS["c"]), V1)
    client = location.client()
    try:
        assert client.list_collections() == [] and client.list_aliases()["aliases"] == []
    finally:
        client.close()
    with pytest.raises(ValueError):
        ms.publish_version(location, synthetic(PARTS["c"]), "no-dashes")


@pytest.mark.unit
def test_a_failed_verification_never_switches_the_alias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = ms.parse_location(f"milvus-lite://{tmp_path / 'store.db'}")
    assert location is not None
    ms.publish_version(location, synthetic(PARTS["c"]), V1)
    counted = ms._count

    def one_row_short(client: object, name: str) -> int:  # as if a write had been lost
        return counted(client, name) - (1 if name.endswith("_chunks") else 0)

    monkeypatch.setattr(ms, "_count", one_row_short)
    with pytest.raises(st.StoreError, match="rows after writing"):
        ms.publish_version(location, synthetic(PARTS["b"]), V2)
    monkeypatch.undo()
    reader = ms.MilvusStoreReader.open(location)
    assert reader.version_id == V1 and [d.doc_id for d in reader.documents()] == ["c0"]
    reader.close()
    client = location.client()
    try:
        assert not [name for name in client.list_collections() if V2 in name]  # nothing of it left
    finally:
        client.close()


@pytest.mark.unit
def test_an_unreachable_engine_is_store_unavailable_within_the_timeout() -> None:
    """A listener that accepts connections and never answers (a server hung, or a network that drops
    replies): connecting gives up after the setting's timeout, with StoreUnavailableError."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        location = ms.parse_location(f"milvus://127.0.0.1:{silent.getsockname()[1]}/ragqa?timeout=1")
        assert location is not None
        started = time.monotonic()
        with pytest.raises(st.StoreUnavailableError, match="127.0.0.1"):
            ms.MilvusStoreReader.open(location)
        assert time.monotonic() - started < 5


@pytest.mark.unit
def test_importing_the_module_needs_no_pymilvus() -> None:
    code = (
        "import sys; sys.modules['pymilvus'] = None; sys.modules['milvus_lite'] = None\n"
        "from indexer import milvus_store as ms\n"
        "assert ms.parse_location('milvus-lite:///x/y.db').alias == 'ragqa'\n"
        "assert ms.parse_location('/var/store') is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.unit
def test_the_store_setting_chooses_the_backend(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from indexer.config import IndexSettings

    milvus = IndexSettings(store="milvus://milvus.internal/live", work_store=tmp_path / "work")
    assert milvus.milvus is not None and milvus.milvus.alias == "live"
    assert milvus.local_store == tmp_path / "work"  # the indexer's own copy, exported to Milvus
    local = IndexSettings(store=tmp_path / "store")
    assert local.milvus is None and local.local_store == tmp_path / "store"
    with pytest.raises(ValidationError, match="alias"):
        IndexSettings(store="milvus://milvus.internal/bad-alias")
    result = subprocess.run(
        [sys.executable, "-m", "indexer.cli", "--store", "milvus+tls://host/x?timeout=never"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.startswith("ragqa-index: invalid settings: RAGQA_STORE")
