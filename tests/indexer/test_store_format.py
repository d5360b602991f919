"""What a version stores so that serving it costs less: the answer step's word counts (idf.json, the
same idf as counting at load), float16 sentence vectors read memory-mapped and served as float32,
the records as memory-mapped columns (records/) made into the same records on demand, and the chunk
vectors read from the FAISS index itself. A version written before these (no records/, no idf.json,
float32 sentences.npy, no sentence_vectors_dtype) still opens and serves the same."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from indexer import store as st
from indexer.chunking import split_sentences
from indexer.config import IndexSettings
from indexer.pipeline import run_index
from indexer.reader import LocalStoreReader, open_reader
from indexer.text import WORDS_SPEC, word_frequencies, words
from service import text as service_text
from service.index import LoadedIndex
from tests.indexer.helpers import as_written_before_records, segment_folder, write_corpus

pytestmark = pytest.mark.unit

DIMENSION = 384
MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# Texts whose characters take one to four bytes in UTF-8, so that character and byte offsets differ.
TEXTS = {
    "plain.md": "Plain words only. Nothing special here at all. The third sentence ends it.",
    "unicode/straße#1": (
        "Die Straße führt nach İstanbul. Ünïcödé — “quoted” and 🎉 emoji here. "
        "Combining e\u0301 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 letters. A last plain sentence."
    ),
    "日本": "日本語の文です。 もう一つの文です。 三つ目の文です。",
    "empty": "",
    "one": "Just one sentence without an end",
}


def sentence_chunks(text: str) -> list[tuple[int, int, tuple[st.Span, ...]]]:
    """Two sentences a chunk, the second repeated as the next chunk's first."""
    spans = split_sentences(text)
    if len(spans) <= 2:
        return [(spans[0][0], spans[-1][1], tuple(spans))] if spans else []
    return [(spans[i][0], spans[i + 1][1], (spans[i], spans[i + 1])) for i in range(len(spans) - 1)]


def synthetic(texts: dict[str, str] = TEXTS, dtype: str = st.SENTENCE_DTYPE, seed: int = 0) -> st.VersionData:
    """A version of these documents with random unit vectors: no model needed."""
    documents: list[st.DocumentRecord] = []
    chunks: list[st.ChunkRecord] = []
    for n, (doc_id, text) in enumerate(texts.items()):
        metadata = {"n": n, "tags": ["a", "ü"], "nested": {"x": None}} if n % 2 else {}
        title, source = f"Title {n} ✓", f"folder/{doc_id}"
        sha256 = st.document_sha256(title, source, text, metadata)
        documents.append(st.DocumentRecord(doc_id, title, source, text, metadata, sha256))
        for start, end, sentences in sentence_chunks(text):
            key = st.chunk_hash(text[start:end], list(sentences))
            chunks.append(st.ChunkRecord(len(chunks), doc_id, start, end, sentences, key))
    rng = np.random.default_rng(seed)
    n_sentences = sum(len(c.sentences) for c in chunks)
    vectors = unit_vectors(rng, len(chunks))
    sentence_vectors = unit_vectors(rng, n_sentences)
    manifest = st.Manifest(
        format=st.FORMAT_VERSION,
        created="2026-01-01T00:00:00+00:00",
        model=st.ModelSpec(MODEL, DIMENSION, 256, True),
        chunker=st.ChunkerSpec("test", 64, 1, False),
        embedded_text="the chunk text",
        sentence_vectors="random unit vectors",
        sentence_vectors_dtype=dtype,
        index=st.IndexSpec("faiss.IndexFlatIP", "bm25s"),
        counts=st.Counts(len(documents), len(chunks), n_sentences),
    )
    by_id = {d.doc_id: d.text for d in documents}
    texts_of = [by_id[c.doc_id][c.start : c.end] for c in chunks]
    return st.VersionData(manifest, documents, chunks, [], vectors, sentence_vectors, texts_of)


def unit_vectors(rng: np.random.Generator, rows: int) -> np.ndarray:
    vectors = rng.standard_normal((rows, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write(store: Path, data: st.VersionData, version_id: str = "20260101T000000000000Z") -> Path:
    data = replace(data, manifest=replace(data.manifest, version=version_id))
    folder = st.write_version(store, version_id, data)
    st.publish(store, version_id)
    return folder


def version_folder(store: Path) -> Path:
    """The folder of the store's live version (written by `write`) or of its one segment (written by an
    index run)."""
    version_id = st.current_version_id(store)
    assert version_id is not None
    folder = st.versions_dir(store) / version_id
    return folder if folder.is_dir() else segment_folder(store)


def live_version(store: Path) -> st.Version:
    return st.open_folder(store, version_folder(store), "live")


def older_copy(store: Path, to: Path, sentence_vectors: np.ndarray | None = None) -> Path:
    """A copy of the store whose version is as ragqa wrote it before this format's additions."""
    copy = Path(shutil.copytree(store, to))
    as_written_before_records(version_folder(copy), sentence_vectors)
    return copy


def chunk_texts(reader: LocalStoreReader) -> list[str]:
    return [reader.chunk_text(i) for i in range(reader.chunk_count)]


@pytest.fixture(scope="module")
def data() -> st.VersionData:
    return synthetic()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, data: st.VersionData) -> Path:
    store = tmp_path_factory.mktemp("format") / "store"
    write(store, data)
    return store


@pytest.fixture(scope="module")
def older(tmp_path_factory: pytest.TempPathFactory, store: Path, data: st.VersionData) -> Path:
    """The same version as written before: float32 sentence vectors (the originals), no records/."""
    return older_copy(store, tmp_path_factory.mktemp("older") / "store", data.sentence_vectors)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by a real index run (the model's vectors)."""
    root = tmp_path_factory.mktemp("indexed")
    corpus = write_corpus(root / "corpus", documents=4, paragraphs=3, seed=11)
    store = root / "store"
    run_index([corpus], IndexSettings(store=store, lock_wait=0))
    return store


# --- records ----------------------------------------------------------------------------------


def test_the_records_read_back_as_written_from_the_mapped_columns(store: Path, data: st.VersionData) -> None:
    folder = version_folder(store)
    names = {p.name for p in (folder / st.RECORDS).iterdir()}
    assert {"texts.bin", "strings.json", "chunk_bytes.npy", "chunk_hash.npy", "document_sha256.npy"} <= names
    total = sum(len(d.text.encode("utf-8")) for d in data.documents)
    assert (folder / st.RECORDS / "texts.bin").stat().st_size == total

    reader = open_reader(store, model_name=MODEL)
    assert isinstance(reader, LocalStoreReader)
    assert list(reader.documents()) == data.documents
    assert list(reader.chunk_records()) == data.chunks
    for chunk in data.chunks:
        text = next(d.text for d in data.documents if d.doc_id == chunk.doc_id)
        assert reader.chunk_text(chunk.chunk_id) == text[chunk.start : chunk.end]
        assert reader.chunk(chunk.chunk_id) == chunk
    for document in data.documents:
        assert reader.document(document.doc_id) == document
        assert reader.find_document(document.doc_id) == document
    assert reader.find_document("nope") is None
    with pytest.raises(KeyError, match="nope"):
        reader.document("nope")
    for bad in (-1, reader.chunk_count):
        with pytest.raises(IndexError):
            reader.chunk_text(bad)


def test_the_tables_behave_as_the_dict_and_list_they_replace(store: Path, data: st.VersionData) -> None:
    version = st.open_version(store)
    documents, chunks = version.documents, version.chunks
    assert list(documents) == [d.doc_id for d in data.documents] and len(documents) == len(data.documents)
    assert "日本" in documents and "nope" not in documents
    assert documents.get("nope") is None and documents.get("nope", 1) == 1
    assert list(documents.values()) == data.documents
    assert dict(documents.items()) == {d.doc_id: d for d in data.documents}
    assert documents.sha256("one") == data.documents[-1].sha256
    assert len(chunks) == len(data.chunks) and list(chunks) == data.chunks
    assert chunks[-1] == data.chunks[-1] and chunks[1:3] == data.chunks[1:3]
    with pytest.raises(IndexError):
        chunks[len(chunks)]
    assert list(chunks.hashes()) == [c.hash for c in data.chunks]
    assert version.chunk_text(data.chunks[2]) == chunks.text(2)
    assert version.files == []


def test_hashes_that_are_not_short_ascii_are_kept_as_strings(tmp_path: Path, data: st.VersionData) -> None:
    odd = replace(data, chunks=[replace(c, hash=f"hash ü {c.chunk_id}") for c in data.chunks])
    write(tmp_path / "store", odd)
    assert not (version_folder(tmp_path / "store") / st.RECORDS / "chunk_hash.npy").exists()
    assert list(open_reader(tmp_path / "store").chunk_records()) == odd.chunks


def test_a_version_without_records_reads_the_same_records_from_its_jsonl(older: Path, store: Path) -> None:
    assert not (version_folder(older) / st.RECORDS).exists()
    before, now = open_reader(older), open_reader(store)
    assert list(before.documents()) == list(now.documents())
    assert list(before.chunk_records()) == list(now.chunk_records())
    assert chunk_texts(before) == chunk_texts(now)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "texts.bin").write_bytes((f / "texts.bin").read_bytes()[:-3]), "document_offsets"),
        (lambda f: (f / "chunk_bytes.npy").unlink(), "cannot be read"),
        (lambda f: np.save(f / "chunk_bytes.npy", np.load(f / "chunk_bytes.npy") + 10_000), "chunk_bytes"),
        (lambda f: np.save(f / "chunk_spans.npy", np.load(f / "chunk_spans.npy")[:-1]), "chunk_spans"),
        (lambda f: np.save(f / "chunk_spans.npy", np.load(f / "chunk_spans.npy") + 1_000), "outside its doc"),
        (
            lambda f: (f / "strings.json").write_text(
                json.dumps({**json.loads((f / "strings.json").read_text()), "doc_id": ["a"] * 5})
            ),
            "a document id twice",
        ),
    ],
)
def test_damaged_records_are_refused(tmp_path: Path, store: Path, damage, message: str) -> None:
    copy = Path(shutil.copytree(store, tmp_path / "store"))
    damage(version_folder(copy) / st.RECORDS)
    with pytest.raises(st.StoreError, match=f"damaged.*{message}"):
        open_reader(copy)


def test_the_writer_refuses_records_its_reader_would_refuse(tmp_path: Path, data: st.VersionData) -> None:
    unknown = replace(data, chunks=[replace(data.chunks[0], doc_id="nope"), *data.chunks[1:]])
    with pytest.raises(st.StoreError, match="unknown document 'nope'"):
        st.write_version(tmp_path, "v1", unknown)
    outside = replace(data, chunks=[replace(data.chunks[0], end=10_000), *data.chunks[1:]])
    with pytest.raises(st.StoreError, match=r"spans \[0, 10000\) outside"):
        st.write_version(tmp_path, "v1", outside)
    twice = replace(data, documents=[*data.documents, data.documents[0]])
    twice = replace(twice, manifest=replace(data.manifest, counts=replace(data.manifest.counts, documents=6)))
    with pytest.raises(st.StoreError, match="same id"):
        st.write_version(tmp_path, "v1", twice)
    huge = replace(data, sentence_vectors=data.sentence_vectors * 1e6)
    with pytest.raises(st.StoreError, match="does not fit in float16"):
        st.write_version(tmp_path, "v1", huge)
    assert not st.versions_dir(tmp_path).exists() or not any(st.versions_dir(tmp_path).iterdir())


# --- word counts and idf -----------------------------------------------------------------------


def test_the_service_words_are_the_indexer_words() -> None:
    assert service_text.words is words
    text = "Discussions İstanbul STRASSE straße 2024 x_y"
    assert words(text) == {"discus", "i", "stanbu", "strass", "straße", "2024", "x_y"}
    assert service_text.content_words("the discussions of x_y") == ["discus", "x_y"]


@pytest.mark.parametrize("which", ["store", "indexed"])
def test_word_counts_are_stored_and_give_exactly_the_idf_counted_at_load(
    which: str, request: pytest.FixtureRequest
) -> None:
    store: Path = request.getfixturevalue(which)
    raw = json.loads((version_folder(store) / st.IDF_FILE).read_text(encoding="utf-8"))
    reader = open_reader(store)
    assert isinstance(reader, LocalStoreReader)
    texts = chunk_texts(reader)
    assert raw["words"] == WORDS_SPEC and raw["texts"] == reader.chunk_count == len(texts)
    assert reader.word_frequencies() == word_frequencies(texts)
    idf = LoadedIndex(reader).idf
    counted = service_text.inverse_document_frequency(texts)
    assert idf == counted  # the same words, the same floats: exactly
    assert all(idf[w] == counted[w] for w in counted)


def test_a_version_without_word_counts_counts_them_at_load_and_says_so(
    older: Path, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader = open_reader(older)
    assert reader.word_frequencies() is None
    with caplog.at_level(logging.INFO, logger="ragqa.service"):
        idf = LoadedIndex(reader).idf
    assert [r for r in caplog.records if r.getMessage() == "index.idf_counted_at_load"]
    assert idf == LoadedIndex(open_reader(store)).idf


def test_word_counts_of_other_words_are_not_used(tmp_path: Path, store: Path) -> None:
    copy = Path(shutil.copytree(store, tmp_path / "store"))
    path = version_folder(copy) / st.IDF_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**raw, "words": "another tokenizer", "df": {"x": 1}}), encoding="utf-8")
    reader = open_reader(copy)
    assert reader.word_frequencies() is None
    assert LoadedIndex(reader).idf == LoadedIndex(open_reader(store)).idf


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read"),
        (json.dumps({"words": WORDS_SPEC, "texts": 3}), "not {words, texts, df}"),
        (json.dumps({"words": WORDS_SPEC, "texts": 3, "df": {}}), "counts 3 texts for"),
    ],
)
def test_a_damaged_word_count_file_is_refused(
    tmp_path: Path, store: Path, content: str, message: str
) -> None:
    copy = Path(shutil.copytree(store, tmp_path / "store"))
    (version_folder(copy) / st.IDF_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(st.StoreError, match=message):
        open_reader(copy)


def test_a_word_count_outside_its_range_is_refused(tmp_path: Path, store: Path) -> None:
    copy = Path(shutil.copytree(store, tmp_path / "store"))
    path = version_folder(copy) / st.IDF_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**raw, "df": {**raw["df"], "zzz": 0}}), encoding="utf-8")
    with pytest.raises(st.StoreError, match="a count outside"):
        open_reader(copy)


# --- sentence vectors ---------------------------------------------------------------------------


def test_sentence_vectors_are_stored_as_float16_and_served_as_float32(
    store: Path, data: st.VersionData
) -> None:
    version = st.open_version(store)
    assert version.manifest.sentence_vectors_dtype == "float16"
    assert np.load(version.path / "sentences.npy").dtype == np.float16
    assert isinstance(version.load_sentence_vectors(), np.memmap)
    reader = open_reader(store)
    expected = data.sentence_vectors.astype(np.float16).astype(np.float32)
    served = np.concatenate([reader.sentence_vectors_of(i) for i in range(reader.chunk_count)])
    assert served.dtype == np.float32 and np.array_equal(served, expected)
    assert np.allclose(served, data.sentence_vectors, rtol=0, atol=5e-4)
    rows = reader.sentence_vectors_of(1)
    assert rows.dtype == np.float32 and not rows.flags.writeable
    assert rows.shape == (len(reader.chunk(1).sentences), DIMENSION)


def test_an_older_float32_version_opens_and_serves_the_same(
    older: Path, store: Path, data: st.VersionData
) -> None:
    before, now = open_reader(older), open_reader(store)
    assert before.manifest.sentence_vectors_dtype == "float32"
    assert before.manifest == replace(now.manifest, sentence_vectors_dtype="float32")
    for i in range(before.chunk_count):  # the float32 vectors exactly as stored
        rows = before.sentence_vectors_of(i)
        first = sum(len(c.sentences) for c in data.chunks[:i])
        assert rows.dtype == np.float32 and not rows.flags.writeable
        assert np.array_equal(rows, data.sentence_vectors[first : first + len(rows)])
    ids = list(range(before.chunk_count))
    assert np.array_equal(before.chunk_vectors(ids), now.chunk_vectors(ids))
    rng = np.random.default_rng(3)
    for query in unit_vectors(rng, 5):
        assert before.dense(query, 4) == now.dense(query, 4)
    for text in ("Straße İstanbul", "plain sentence", "日本語の文です"):
        assert before.lexical(text, 5) == now.lexical(text, 5)
    assert LoadedIndex(before).idf == LoadedIndex(now).idf


def test_the_writer_stores_the_dtype_its_manifest_names(tmp_path: Path) -> None:
    data = synthetic(dtype="float32")
    folder = write(tmp_path / "store", data)
    assert np.load(folder / "sentences.npy").dtype == np.float32
    reader = open_reader(tmp_path / "store")
    assert reader.manifest.sentence_vectors_dtype == "float32"
    first = data.sentence_vectors[: len(data.chunks[0].sentences)]
    assert np.array_equal(reader.sentence_vectors_of(0), first)


def test_sentence_vectors_of_another_dtype_than_the_manifest_says_are_refused(
    tmp_path: Path, store: Path
) -> None:
    copy = Path(shutil.copytree(store, tmp_path / "store"))
    path = version_folder(copy) / "sentences.npy"
    np.save(path, np.load(path).astype(np.float32))
    with pytest.raises(st.StoreError, match="sentences.npy holds float32 vectors, its manifest says float16"):
        open_reader(copy)


# --- chunk vectors, held once -------------------------------------------------------------------


@pytest.mark.parametrize("which", ["store", "indexed"])
def test_chunk_vectors_are_read_from_the_faiss_index_itself(
    which: str, request: pytest.FixtureRequest
) -> None:
    store: Path = request.getfixturevalue(which)
    version = live_version(store)
    index = version.load_faiss()
    copied = index.reconstruct_n(0, index.ntotal)  # what the reader held beside the index before
    reader = open_reader(store)
    assert isinstance(reader, LocalStoreReader)
    held = reader._placed[0].segment.vectors
    assert not held.flags.owndata and not held.flags.writeable  # a view, not a second copy
    ids = list(range(reader.chunk_count))
    assert np.array_equal(reader.chunk_vectors(ids), copied)
    picked = reader.chunk_vectors([2, 0, 2])
    assert picked.dtype == np.float32 and np.array_equal(picked, copied[[2, 0, 2]])
    picked[0] = 0  # a copy for the caller: the index is untouched
    assert np.array_equal(reader.chunk_vectors([2]), copied[[2]])

    rng = np.random.default_rng(5)
    for query in unit_vectors(rng, 5):
        found = reader.dense(query, 3)
        scores, rows = index.search(query.reshape(1, -1), 3)
        assert found == [(int(i), float(s)) for i, s in zip(rows[0], scores[0], strict=True)]
        exact = copied @ query
        assert [i for i, _ in found] == [int(i) for i in np.argsort(-exact)[:3]]
        assert [s for _, s in found] == pytest.approx([float(exact[i]) for i, _ in found], abs=1e-5)


def test_sentence_rows_are_read_from_the_file_not_through_a_mapping(tmp_path: Path, store: Path) -> None:
    reader = open_reader(store)
    assert isinstance(reader, LocalStoreReader)
    rows = reader._placed[0].segment.sentences
    assert rows._array is None and rows._file is not None  # pread: reading rows maps nothing

    mapped = st.open_version(store).load_sentence_vectors()
    for array in (np.asarray(mapped), mapped[1:], mapped[:-1]):  # in memory, or a part of a file's map
        assert st.Rows(array)._file is None
        assert np.array_equal(st.Rows(array).rows(1, 3), array[1:3])
    assert np.array_equal(st.Rows(mapped).rows(2, 5), mapped[2:5])
    assert st.Rows(mapped).rows(0, 0).shape == (0, DIMENSION)

    (tmp_path / "short.bin").write_bytes(b"0123456789")
    part = st.FileBytes(tmp_path / "short.bin", 2)
    assert len(part) == 8 and part[1:4] == b"345" and part[5:100] == b"789" and part[6:2] == b""
    (tmp_path / "short.bin").write_bytes(b"0123")
    with pytest.raises(st.StoreError, match="truncated"):
        part[0:5]
