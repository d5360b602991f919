"""The typed manifest and the store's read interface: the manifest round-trips in its JSON layout, older
format-2 manifests open with defaults, and a version whose parts disagree is refused at load."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from indexer import segments as sg
from indexer import store as st
from indexer.config import IndexSettings
from indexer.pipeline import run_index
from indexer.reader import LocalStoreReader, StoreReader, open_reader
from tests.indexer.helpers import (
    as_written_before_records,
    resummed,
    segment_folder,
    single_segment,
    write_corpus,
)

pytestmark = pytest.mark.unit

# A manifest as the first format-2 stores wrote it, before the lexical tokenizer's settings were added.
OLDER_MANIFEST = {
    "format": 2,
    "created": "2025-01-02T03:04:05+00:00",
    "model": {
        "name": "sentence-transformers/all-MiniLM-L6-v2",
        "dimension": 384,
        "max_seq_length": 256,
        "normalized": True,
    },
    "chunker": {
        "splitter": "syntok 1.4.4; blank lines and headings end sentences",
        "max_tokens": 200,
        "overlap_sentences": 1,
        "embed_title": True,
    },
    "embedded_text": "title (at most 32 tokens), a newline, then the chunk text",
    "sentence_vectors": "mean of the chunk's contextual token embeddings inside each sentence",
    "index": {"dense": "faiss.IndexFlatIP", "bm25": "bm25s, English stopwords, same texts"},
    "counts": {"documents": 3, "chunks": 7, "sentences": 30},
    "version": "20250102T030405000000Z",
}


def write_raw_manifest(folder: Path, value: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(value), encoding="utf-8")


# --- the manifest ------------------------------------------------------------------------------


def test_a_written_manifest_reads_back_in_todays_layout_plus_tokenizer_and_dtype(tmp_path: Path) -> None:
    manifest = st.Manifest.from_json(OLDER_MANIFEST)
    manifest = st.Manifest(
        format=manifest.format,
        created=manifest.created,
        model=manifest.model,
        chunker=manifest.chunker,
        embedded_text=manifest.embedded_text,
        sentence_vectors=manifest.sentence_vectors,
        index=st.IndexSpec("faiss.IndexFlatIP", "bm25s, English stopwords, same texts"),
        counts=manifest.counts,
        version=manifest.version,
    )
    st.write_manifest(tmp_path, manifest)
    assert st.read_manifest(tmp_path) == manifest

    raw = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    expected = json.loads(json.dumps(OLDER_MANIFEST))
    expected["index"]["lexical_tokenizer"] = {"library": "bm25s", "stopwords": "en", "lower": True}
    expected["sentence_vectors_dtype"] = "float16"  # a manifest made today: new versions store float16
    # what encoded the passages, and no weights digest (an older version's model records none)
    expected["model"].update(encoder="pytorch", weights="")
    assert raw == expected
    keys = list(OLDER_MANIFEST)  # the same keys in the same order, the dtype after its description
    keys.insert(keys.index("sentence_vectors") + 1, "sentence_vectors_dtype")
    assert list(raw) == keys
    assert list(raw["index"]) == ["dense", "bm25", "lexical_tokenizer"]


def test_a_manifest_being_built_has_no_version_key(tmp_path: Path) -> None:
    manifest = st.Manifest.from_json({k: v for k, v in OLDER_MANIFEST.items() if k != "version"})
    assert manifest.version is None
    assert "version" not in manifest.to_json()
    st.write_manifest(tmp_path, manifest)
    assert st.read_manifest(tmp_path) == manifest


def test_an_older_format_2_manifest_opens_with_the_default_tokenizer_and_float32(tmp_path: Path) -> None:
    write_raw_manifest(tmp_path, OLDER_MANIFEST)
    manifest = st.read_manifest(tmp_path)
    assert manifest.index.lexical_tokenizer == st.LexicalTokenizerSpec("bm25s", "en", True)
    assert manifest.sentence_vectors_dtype == "float32"  # written before sentence vectors were float16
    assert manifest.model == st.ModelSpec("sentence-transformers/all-MiniLM-L6-v2", 384, 256, True)
    assert manifest.chunker.max_tokens == 200 and manifest.chunker.overlap_sentences == 1
    assert manifest.counts == st.Counts(documents=3, chunks=7, sentences=30)
    assert manifest.version == "20250102T030405000000Z"


def test_other_tokenizer_settings_are_read_as_written(tmp_path: Path) -> None:
    value = json.loads(json.dumps(OLDER_MANIFEST))
    value["index"]["lexical_tokenizer"] = {"library": "bm25s", "stopwords": None, "lower": False}
    write_raw_manifest(tmp_path, value)
    assert st.read_manifest(tmp_path).index.lexical_tokenizer == st.LexicalTokenizerSpec("bm25s", None, False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("counts"), "no 'counts'"),
        (lambda m: m["model"].pop("dimension"), "no 'model.dimension'"),
        (lambda m: m["model"].update(dimension="384"), "model.dimension is '384', not int"),
        (lambda m: m["chunker"].update(max_tokens=True), "chunker.max_tokens is True, not int"),
        (lambda m: m.update(index=[]), "index is not a JSON object"),
        (lambda m: m.update(format=1), "store format 1"),
        (lambda m: m.update(sentence_vectors_dtype="int8"), "sentence_vectors_dtype is 'int8'"),
        (lambda m: m.update(sentence_vectors_dtype=16), "sentence_vectors_dtype is 16, not str"),
    ],
)
def test_a_malformed_manifest_is_a_store_error(
    tmp_path: Path, change: Callable[[dict], object], message: str
) -> None:
    value = json.loads(json.dumps(OLDER_MANIFEST))
    change(value)
    write_raw_manifest(tmp_path, value)
    with pytest.raises(st.StoreError, match=message):
        st.read_manifest(tmp_path)


def test_a_missing_manifest_is_an_incomplete_version(tmp_path: Path) -> None:
    with pytest.raises(st.StoreError, match="not a complete version"):
        st.read_manifest(tmp_path)


# --- the reader --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reader")
    corpus = write_corpus(root / "corpus", documents=3, paragraphs=2, seed=5)
    store = root / "store"
    run_index([corpus], IndexSettings(store=store, lock_wait=0))
    return store


@pytest.fixture
def store_copy(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built store, to damage."""
    return Path(shutil.copytree(built, tmp_path / "store"))


version_folder = segment_folder


def test_the_local_reader_keeps_the_contract(built: Path) -> None:
    reader: StoreReader = open_reader(built, model_name=IndexSettings().model)
    version = single_segment(built)
    assert isinstance(reader, LocalStoreReader)
    assert reader.version_id == sg.read_commit(built).version == st.current_version_id(built)
    assert (
        reader.manifest.model == version.manifest.model and reader.manifest.counts == version.manifest.counts
    )
    assert reader.document_count == len(version.documents) == reader.manifest.counts.documents
    assert reader.chunk_count == len(version.chunks) == reader.manifest.counts.chunks
    assert [d.doc_id for d in reader.documents()] == list(version.documents)
    assert [c.chunk_id for c in reader.chunk_records()] == list(range(reader.chunk_count))
    assert reader.find_document("nope.md") is None
    with pytest.raises(KeyError):
        reader.document("nope.md")
    for bad in (-1, reader.chunk_count):
        with pytest.raises(IndexError):
            reader.chunk(bad)
        with pytest.raises(IndexError):
            reader.sentence_vectors_of(bad)
        with pytest.raises(IndexError):
            reader.chunk_vectors([0, bad])

    dimension = reader.manifest.model.dimension
    for chunk in reader.chunk_records():
        assert reader.chunk_text(chunk.chunk_id) == version.chunk_text(chunk)
        assert reader.sentence_vectors_of(chunk.chunk_id).shape == (len(chunk.sentences), dimension)
    assert reader.chunk_vectors([]).shape == (0, dimension)
    vectors = reader.chunk_vectors([2, 0, 2])
    assert vectors.shape == (3, dimension) and np.array_equal(vectors[0], vectors[2])

    everything = reader.dense(vectors[1], reader.chunk_count + 10)
    assert len(everything) == reader.chunk_count
    assert everything[0][0] == 0 and everything[0][1] == pytest.approx(1.0, abs=1e-4)
    assert [s for _, s in everything] == sorted((s for _, s in everything), reverse=True)
    assert reader.dense(vectors[1], 0) == [] and reader.dense(vectors[1], -3) == []
    with pytest.raises(ValueError):
        reader.dense(vectors[1][:10], 3)

    words = reader.chunk_text(1).split()[:6]
    hits = reader.lexical(" ".join(words), reader.chunk_count + 10)
    assert hits and len(hits) <= reader.chunk_count and all(s > 0 for _, s in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert len(reader.lexical(" ".join(words), 1)) == 1
    assert reader.lexical(" ".join(words), 0) == []
    assert reader.lexical("zzzqqq xxyyzz", 5) == []


def test_a_version_with_an_older_manifest_opens_and_searches_the_same(store_copy: Path) -> None:
    before = open_reader(store_copy)
    folder = version_folder(store_copy)
    value = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    del value["index"]["lexical_tokenizer"]
    (folder / "manifest.json").write_text(json.dumps(value), encoding="utf-8")
    after = open_reader(resummed(store_copy))
    assert after.manifest.index.lexical_tokenizer == st.LexicalTokenizerSpec()
    query = after.chunk_text(0)
    assert after.lexical(query, 5) == before.lexical(query, 5)


def test_a_version_whose_sentence_vectors_lack_a_row_is_refused(store_copy: Path) -> None:
    folder = version_folder(store_copy)
    sentences = np.load(folder / "sentences.npy")
    np.save(folder / "sentences.npy", sentences[:-1])
    with pytest.raises(st.StoreError, match=r"sentences\.npy has \d+ sentence vectors but its chunks hold"):
        open_reader(resummed(store_copy))


def test_a_version_whose_sentence_vectors_have_another_width_is_refused(store_copy: Path) -> None:
    folder = version_folder(store_copy)
    np.save(folder / "sentences.npy", np.load(folder / "sentences.npy")[:, :100])
    with pytest.raises(st.StoreError, match="damaged"):
        open_reader(resummed(store_copy))


def test_a_version_whose_chunks_disagree_with_its_faiss_index_is_refused(store_copy: Path) -> None:
    folder = version_folder(store_copy)
    as_written_before_records(folder)  # its records are then those of chunks.jsonl, changed below
    lines = (folder / "chunks.jsonl").read_text(encoding="utf-8").splitlines()
    last = json.loads(lines[-1])
    value = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    value["counts"]["chunks"] += 1
    value["counts"]["sentences"] += len(last["sentences"])
    (folder / "manifest.json").write_text(json.dumps(value), encoding="utf-8")
    extra = {**last, "chunk_id": last["chunk_id"] + 1}
    (folder / "chunks.jsonl").write_text("\n".join([*lines, json.dumps(extra)]) + "\n", encoding="utf-8")
    with pytest.raises(st.StoreError, match=r"index\.faiss holds \d+ vectors"):
        open_reader(resummed(store_copy))


def test_a_version_whose_counts_disagree_with_its_records_is_refused(store_copy: Path) -> None:
    folder = version_folder(store_copy)
    value = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    value["counts"]["documents"] += 1
    (folder / "manifest.json").write_text(json.dumps(value), encoding="utf-8")
    with pytest.raises(st.StoreError, match="manifest counts"):
        open_reader(resummed(store_copy))


def test_the_writer_refuses_sentence_vectors_that_do_not_match_the_chunks(tmp_path: Path) -> None:
    manifest = st.Manifest.from_json(
        {**OLDER_MANIFEST, "counts": {"documents": 1, "chunks": 1, "sentences": 2}}
    )
    document = st.DocumentRecord("a.md", "A", "a.md", "One. Two.", {}, "x")
    chunk = st.ChunkRecord(0, "a.md", 0, 9, ((0, 4), (5, 9)), "h")
    data = st.VersionData(
        manifest,
        [document],
        [chunk],
        [],
        np.zeros((1, 384), np.float32),
        np.zeros((1, 384), np.float32),  # one row: the chunk has two sentences
        ["One. Two."],
    )
    with pytest.raises(st.StoreError, match="sentence vectors for 2 sentences"):
        st.write_version(tmp_path, "v1", data)
    assert not st.versions_dir(tmp_path).exists()
