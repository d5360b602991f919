"""A segment's files (and a format-2 version's: the same files), written by the indexer; the store
around them (commits, tombstones, publishing, merges) is indexer.segments. The service reads them only
through the `StoreReader` interface of indexer.reader.

    <store>/segments/<name>/     one complete, immutable index of some documents (a store written
                                 before segments: <store>/versions/<id>/, CURRENT naming it):
        manifest.json            format, model, chunker settings, the lexical tokenizer's settings,
                                 counts, created time (the `Manifest` dataclass)
        documents.jsonl          {"doc_id", "title", "source", "text", "metadata", "sha256"} a line
        chunks.jsonl             {"chunk_id", "doc_id", "start", "end", "sentences", "hash"} a line;
                                 chunk_id is the row in index.faiss, sentences are [start, end] pairs
        files.json               the files each document came from, with size and mtime (for reuse)
        index.faiss              inner-product index of the normalised chunk vectors (indexer.dense:
                                 exact below a size, HNSW above)
        sentences.npy            vectors of every chunk's sentences, in chunk order (the sentences of
                                 chunk i follow those of chunks 0..i-1); float16 (float32 in versions
                                 written before: the manifest's sentence_vectors_dtype says which),
                                 read a chunk's rows at a time by the reader
        bm25/                    bm25s index and its tokenizer's vocabulary, over the same texts,
                                 tokenized as the manifest's index.lexical_tokenizer says, and its
                                 statistics (indexer.lexical)
        records/                 the records of documents.jsonl and chunks.jsonl again, as columns a
                                 reader maps (the .npy) or reads on demand (texts.bin) instead of
                                 parsing a line per record:
            texts.bin            every document's text, UTF-8, end to end in document order
            strings.json         {"doc_id", "title", "source", "metadata"}: one list each, in document
                                 order (and "sha256", "chunk_hash" when they are not short ASCII, and
                                 "prefix": what BM25 indexed in front of each document's chunks,
                                 which a merge indexes again)
            *.npy                int64 columns: document_offsets (D+1 byte offsets of the texts in
                                 texts.bin), document_chars (each text's length in characters),
                                 chunk_document (the row of the chunk's document), chunk_spans
                                 ([start, end) in characters), chunk_bytes ([start, end) in texts.bin),
                                 chunk_sentences (C+1 offsets into sentence_spans and sentences.npy),
                                 sentence_spans ([start, end) pairs); document_sha256 and chunk_hash as
                                 fixed-width ASCII
        idf.json                 the answer step's word counts (indexer.text): {"words": how words are
                                 made, "texts": chunks, "df": {word: chunks holding it}}, over the
                                 chunks' texts, from which the service computes its idf
    <store>/cache/embeddings.sqlite   a chunk's vector and its sentences' vectors, keyed by
                                      (model, sha256 of the embedded text and sentence spans)
    <store>/.lock                held by the one indexer that may write

A segment (or version) is written under .tmp-<name> beside its final folder, flushed and renamed
(`write_folder`); only then is it published (indexer.segments.publish_commit), so a crash at any
moment leaves the previous version live and intact.

records/ and idf.json are derived from the other files: a format-2 version written before they were
added opens without them (its records are read from the .jsonl files, its word counts are made by the
service at load), and its float32 sentences.npy is read as it is.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import types
import typing
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence, ValuesView
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from indexer.text import WORDS_SPEC, WordFrequencies, word_frequencies

FORMAT_VERSION = 2
Span = tuple[int, int]
TMP_PREFIX = ".tmp-"
SENTENCE_DTYPE = "float16"  # how new versions store their sentence vectors
SENTENCE_DTYPES = ("float16", "float32")  # what a reader reads (float32: versions written before float16)
RECORDS = "records"  # the folder of the records as columns
IDF_FILE = "idf.json"


class StoreError(Exception):
    pass


class ModelMismatchError(StoreError):
    pass


class StoreBusyError(StoreError):
    pass


class NoVersionError(StoreError):
    pass


class StoreUnavailableError(StoreError):
    """The store's engine (a Milvus server) cannot be reached or failed to answer in time: the service
    says not ready (503) until it answers again."""


@dataclass(frozen=True)
class DocumentRecord:
    doc_id: str
    title: str
    source: str
    text: str
    metadata: dict[str, Any]
    sha256: str


@dataclass(frozen=True)
class DocumentFacts:
    """What a filter reads of a document: its id, source and metadata, without its text."""

    doc_id: str
    source: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class ChunkRecord:
    chunk_id: int
    doc_id: str
    start: int
    end: int
    sentences: tuple[Span, ...]
    hash: str  # sha256 of what was embedded: title prefix + chunk text, and the sentence spans


@dataclass(frozen=True)
class FileRecord:
    path: str  # absolute
    root: str  # absolute; ids are relative to it
    size: int
    mtime_ns: int
    doc_ids: tuple[str, ...]


# --- manifest --------------------------------------------------------------------------------


PASSAGE_ENCODER = "pytorch"  # bench/passage_encoders.py: ONNX Runtime is slower for passages, int8 differs


@dataclass(frozen=True)
class ModelSpec:
    """The embedding model every vector of the version comes from."""

    name: str
    dimension: int
    max_seq_length: int
    normalized: bool = True  # L2-normalised vectors: inner product is cosine
    # What computed the passages' vectors: "pytorch" (sentence-transformers); questions are encoded by
    # whatever gives the same vectors (the ONNX export is checked against PyTorch at every load).
    encoder: str = PASSAGE_ENCODER
    # indexer.embedding.weights_digest of the model; "" in versions written before it was recorded
    weights: str = ""


@dataclass(frozen=True)
class ChunkerSpec:
    """The chunker's settings: a version's chunks are reused only by a run with equal settings."""

    splitter: str
    max_tokens: int
    overlap_sentences: int
    embed_title: bool


@dataclass(frozen=True)
class LexicalTokenizerSpec:
    """How the lexical index tokenizes the chunks' texts; a query must be tokenized the same way.

    Absent from the manifests of the first format-2 stores, which were all written with these defaults."""

    library: str = "bm25s"
    stopwords: str | None = "en"
    lower: bool = True


@dataclass(frozen=True)
class IndexSpec:
    dense: str  # a description, e.g. "faiss.IndexFlatIP"
    bm25: str  # a description
    lexical_tokenizer: LexicalTokenizerSpec = LexicalTokenizerSpec()


@dataclass(frozen=True)
class Counts:
    documents: int
    chunks: int
    sentences: int


@dataclass(frozen=True)
class Manifest:
    """manifest.json, typed. Field order is the file's key order; `version` is absent while a version is
    being built and written last."""

    format: int
    created: str  # ISO 8601, UTC
    model: ModelSpec
    chunker: ChunkerSpec
    embedded_text: str  # a description of what was embedded for each chunk
    sentence_vectors: str  # a description of how the sentence vectors were made
    # ... and how sentences.npy stores them: written as the manifest says; "float32" when absent (the
    # versions written before float16)
    sentence_vectors_dtype: str = field(default=SENTENCE_DTYPE, kw_only=True)
    index: IndexSpec
    counts: Counts
    version: str | None = None

    def to_json(self) -> dict[str, Any]:
        value = asdict(self)
        if self.version is None:
            del value["version"]
        return value

    @classmethod
    def from_json(cls, value: Any, where: str = "manifest") -> Manifest:
        """Read a manifest; a missing or ill-typed field is a StoreError, an unknown one is ignored. A
        manifest without sentence_vectors_dtype is of a version whose sentence vectors are float32."""
        if isinstance(value, dict) and "sentence_vectors_dtype" not in value:
            value = {**value, "sentence_vectors_dtype": "float32"}
        manifest = _from_json(cls, value, where, "")
        if manifest.sentence_vectors_dtype not in SENTENCE_DTYPES:
            raise StoreError(
                f"{where}: sentence_vectors_dtype is {manifest.sentence_vectors_dtype!r}, not one of "
                f"{', '.join(SENTENCE_DTYPES)}"
            )
        return manifest


_T = TypeVar("_T")


def _from_json(cls: type[_T], value: Any, where: str, prefix: str) -> _T:
    if not isinstance(value, dict):
        raise StoreError(f"{where}: {prefix.rstrip('.') or 'the manifest'} is not a JSON object")
    hints = typing.get_type_hints(cls)
    known: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        name = prefix + f.name
        if f.name not in value:
            if f.default is MISSING:
                raise StoreError(f"{where}: no {name!r}")
            continue
        kind, item = hints[f.name], value[f.name]
        if isinstance(kind, type) and is_dataclass(kind):
            item = _from_json(kind, item, where, name + ".")
        elif not _is_a(item, kind):
            raise StoreError(f"{where}: {name} is {item!r}, not {getattr(kind, '__name__', kind)}")
        known[f.name] = item
    return cls(**known)


def _is_a(value: Any, kind: Any) -> bool:
    if isinstance(kind, types.UnionType):
        return any(_is_a(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


@dataclass
class VersionData:
    """Everything a version holds, in memory, before it is written."""

    manifest: Manifest
    documents: list[DocumentRecord]
    chunks: list[ChunkRecord]
    files: list[FileRecord]
    vectors: np.ndarray
    sentence_vectors: np.ndarray
    bm25_texts: list[str] = field(default_factory=list)


def document_sha256(title: str, source: str, text: str, metadata: dict[str, Any]) -> str:
    payload = json.dumps([title, source, text, metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def chunk_hash(embedded_text: str, sentence_spans: list[Span]) -> str:
    """What identifies a chunk's vectors: the embedded text and where its sentences are in it."""
    payload = embedded_text + "\x00" + json.dumps(sentence_spans)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --- layout ----------------------------------------------------------------------------------


def versions_dir(store: Path) -> Path:
    return store / "versions"


def current_version_id(store: Path) -> str | None:
    try:
        value = (store / "CURRENT").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return value or None


def new_version_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


@contextmanager
def writer_lock(store: Path, wait_seconds: float) -> Iterator[None]:
    """Only one indexer writes a store at a time; a second one waits, then fails clearly."""
    from filelock import FileLock, Timeout

    store.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(store / ".lock"))
    try:
        lock.acquire(timeout=wait_seconds)
    except Timeout as exc:
        raise StoreBusyError(
            f"another ragqa-index is writing to {store} (waited {wait_seconds:g}s for its lock); "
            "run again when it has finished"
        ) from exc
    try:
        yield
    finally:
        lock.release()


# --- writing ---------------------------------------------------------------------------------


def write_version(store: Path, version_id: str, data: VersionData) -> Path:
    """Write a complete format-2 version (versions/<id>/) next to the live one and flush it; not yet
    published. (The indexer writes segments, indexer.segments; a version is one segment's files.)"""
    return write_folder(versions_dir(store) / version_id, data)


def write_folder(
    final: Path, data: VersionData, words: WordFrequencies | None = None, average_length: float | None = None
) -> Path:
    """Write a version's (or a segment's) files under a temporary name next to `final`, flush them and
    rename the folder to `final`. `words`: the answer step's word counts over the chunks' texts, when the
    caller has them (else they are counted here); `average_length`: the corpus's average text length in
    BM25 tokens, for the BM25 index's length normalisation (else the texts' own)."""
    from indexer import dense
    from indexer.lexical import LexicalSegment

    check_consistent(data)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    _write_jsonl(tmp / "documents.jsonl", (asdict(d) for d in data.documents))
    _write_jsonl(tmp / "chunks.jsonl", (_chunk_row(c) for c in data.chunks))
    _write_json(tmp / "files.json", {"files": [asdict(f) for f in data.files]})
    columns = _Columns.of(data.documents, data.chunks, _prefixes(data))
    columns.write(tmp / RECORDS)
    _write_word_frequencies(tmp / IDF_FILE, words or word_frequencies(columns.chunk_texts()))
    del columns

    vectors = np.ascontiguousarray(data.vectors, dtype=np.float32)
    index = dense.build_dense_index(vectors, data.manifest.model.dimension)
    described = dense.describe(index)
    faiss_write(index, tmp / "index.faiss")
    del index

    sentence_vectors = np.ascontiguousarray(data.sentence_vectors, dtype=data.manifest.sentence_vectors_dtype)
    with open(tmp / "sentences.npy", "wb") as fh:
        np.save(fh, sentence_vectors)
        fh.flush()
        os.fsync(fh.fileno())
    del sentence_vectors
    LexicalSegment.write(tmp / "bm25", data.bm25_texts, data.manifest.index.lexical_tokenizer, average_length)
    manifest = replace(data.manifest, index=replace(data.manifest.index, dense=described))
    write_manifest(tmp, manifest)  # last: a version without one is incomplete
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def faiss_write(index: Any, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))
    fsync_file(path)


def _prefixes(data: VersionData) -> list[str] | None:
    """What BM25 indexed in front of each document's chunks (its embedded title), read off the
    chunks' BM25 texts; None when the data holds none."""
    if len(data.bm25_texts) != len(data.chunks):
        return None
    found: dict[str, str] = {}
    for chunk, text in zip(data.chunks, data.bm25_texts, strict=True):
        if chunk.doc_id not in found:
            found[chunk.doc_id] = text[: len(text) - (chunk.end - chunk.start)]
    return [found.get(d.doc_id, "") for d in data.documents]


def check_consistent(data: VersionData) -> None:
    """Never write a version that its reader would refuse."""
    sentences = sum(len(c.sentences) for c in data.chunks)
    counts = Counts(len(data.documents), len(data.chunks), sentences)
    if data.manifest.counts != counts:
        raise StoreError(f"the manifest counts {data.manifest.counts}, the version holds {counts}")
    if [c.chunk_id for c in data.chunks] != list(range(len(data.chunks))):
        raise StoreError("chunk ids must be 0, 1, 2... in order")
    dimension = data.manifest.model.dimension
    if data.vectors.shape != (len(data.chunks), dimension):
        raise StoreError(f"{data.vectors.shape} chunk vectors for {len(data.chunks)} chunks of {dimension}")
    if data.sentence_vectors.shape != (sentences, dimension):
        raise StoreError(f"{data.sentence_vectors.shape} sentence vectors for {sentences} sentences")
    dtype = data.manifest.sentence_vectors_dtype
    if dtype not in SENTENCE_DTYPES:
        raise StoreError(f"sentence vectors as {dtype!r}: this ragqa writes {', '.join(SENTENCE_DTYPES)}")
    if np.dtype(dtype).itemsize < data.sentence_vectors.dtype.itemsize and len(data.sentence_vectors):
        largest = max(float(data.sentence_vectors.max()), -float(data.sentence_vectors.min()))
        if not largest <= float(np.finfo(dtype).max):
            raise StoreError(f"a sentence vector value of {largest} does not fit in {dtype}")
    documents = {d.doc_id for d in data.documents}
    if len(documents) != len(data.documents):
        raise StoreError("two documents have the same id")
    lengths = {d.doc_id: len(d.text) for d in data.documents}
    for chunk in data.chunks:
        if chunk.doc_id not in lengths:
            raise StoreError(f"chunk {chunk.chunk_id} belongs to an unknown document {chunk.doc_id!r}")
        if not 0 <= chunk.start <= chunk.end <= lengths[chunk.doc_id]:
            raise StoreError(
                f"chunk {chunk.chunk_id} spans [{chunk.start}, {chunk.end}) outside its document"
            )


def publish(store: Path, version_id: str) -> None:
    """Make `version_id` live: one atomic replace of CURRENT."""
    tmp = store / "CURRENT.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(version_id + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, store / "CURRENT")
    fsync_dir(store)


def _chunk_row(chunk: ChunkRecord) -> dict[str, Any]:
    row = asdict(chunk)
    row["sentences"] = [list(s) for s in chunk.sentences]
    return row


def bm25_tokenizer(spec: LexicalTokenizerSpec) -> Any:
    """The lexical index's tokenizer, as the manifest describes it (without its vocabulary)."""
    if spec.library != "bm25s":
        raise StoreError(f"unknown lexical index library {spec.library!r}; this ragqa reads bm25s")
    from bm25s.tokenization import Tokenizer

    quiet_bm25s()
    return Tokenizer(stopwords=spec.stopwords, lower=spec.lower)


@functools.cache
def quiet_bm25s() -> None:
    """bm25s logs every load and tokenization at INFO: WARNING and above only. Once: a logger's
    setLevel clears the cache of every logger, which cost each search 0.2 ms."""
    logging.getLogger("bm25s").setLevel(logging.WARNING)


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False))
            fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(value, fh, ensure_ascii=False, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_file(path)


# --- reading ---------------------------------------------------------------------------------


def read_manifest(version_path: Path) -> Manifest:
    try:
        with open(version_path / "manifest.json", encoding="utf-8") as fh:
            raw = json.load(fh)
    except FileNotFoundError as exc:
        raise StoreError(f"{version_path} is not a complete version (no manifest.json)") from exc
    except (OSError, ValueError) as exc:
        raise StoreError(f"{version_path}/manifest.json cannot be read: {exc}") from exc
    found = raw.get("format") if isinstance(raw, dict) else None
    if found != FORMAT_VERSION:
        raise StoreError(
            f"{version_path} has store format {found!r}; this ragqa reads format "
            f"{FORMAT_VERSION}. Rebuild the store with ragqa-index --rebuild."
        )
    return Manifest.from_json(raw, f"{version_path}/manifest.json")


def write_manifest(version_path: Path, manifest: Manifest) -> None:
    _write_json(version_path / "manifest.json", manifest.to_json())


def check_model(store: Path, manifest: Manifest, model_name: str) -> None:
    built_with = manifest.model.name
    if built_with != model_name:
        raise ModelMismatchError(
            f"the store {store} was built with the embedding model {built_with!r} "
            f"({manifest.model.dimension} dimensions), but the configured model is "
            f"{model_name!r}. Either configure RAGQA_MODEL={built_with!r}, or rebuild the store "
            f"for the new model: ragqa-index --rebuild --store {store} PATH..."
        )


def cache_key(name: str, weights: str) -> str:
    """The embedding cache's key of a model's vectors: its name and weights digest (the name alone for
    a version that records no digest, as the cache was keyed before)."""
    return f"{name}@{weights}" if weights else name


def check_weights(store: str | Path, model: ModelSpec, weights: str) -> None:
    """ModelMismatchError when the version's vectors come from other weights than `weights` (the
    configured model's weights_digest) under the same model name: a model folder changed, or another
    model given the same name. A version that records no digest is not checked."""
    built_with = model.weights
    if built_with and built_with != weights:
        raise ModelMismatchError(
            f"the store {store} was built with other weights of the model {model.name!r} "
            f"(digest {built_with}, the configured model's is {weights}): its vectors are not this "
            f"model's. Configure the model it was built with, or rebuild the store: "
            f"ragqa-index --rebuild --store {store} PATH..."
        )


@dataclass
class Version:
    """One published version's records, read back: what the indexer builds on, and what a reader
    (indexer.reader) loads its indexes next to. The records are columns (`DocumentTable`,
    `ChunkTable`) that make each record when it is asked for; files.json is read on first use."""

    store: Path
    version_id: str
    path: Path
    manifest: Manifest
    documents: DocumentTable
    chunks: ChunkTable

    @cached_property
    def files(self) -> list[FileRecord]:
        with open(self.path / "files.json", encoding="utf-8") as fh:
            return [FileRecord(**{**f, "doc_ids": tuple(f["doc_ids"])}) for f in json.load(fh)["files"]]

    def chunk_text(self, chunk: ChunkRecord) -> str:
        return self.documents[chunk.doc_id].text[chunk.start : chunk.end]

    def load_faiss(self) -> Any:
        import faiss

        return faiss.read_index(str(self.path / "index.faiss"))

    def load_sentence_vectors(self) -> np.ndarray:
        """Every chunk's sentences' vectors, in chunk order, in the dtype they are stored in
        (manifest.sentence_vectors_dtype), memory-mapped copy-on-write: a row is read from the file when
        it is used, and a change made to the array stays in this process. Not yet checked against the
        chunks."""
        vectors: np.ndarray = np.load(self.path / "sentences.npy", mmap_mode="c")
        return vectors

    def load_word_frequencies(self) -> WordFrequencies | None:
        """The answer step's word counts over the chunks' texts, as stored with the version (idf.json);
        None when it has none (a version written before they were stored) or when they count words made
        another way than indexer.text makes them today. StoreError when the file is damaged."""
        try:
            with open(self.path / IDF_FILE, encoding="utf-8") as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise version_damaged(self.store, self.version_id, f"{IDF_FILE} cannot be read: {exc}") from exc
        if not (
            isinstance(raw, dict)
            and isinstance(raw.get("words"), str)
            and _is_a(raw.get("texts"), int)
            and isinstance(raw.get("df"), dict)
        ):
            raise version_damaged(self.store, self.version_id, f"{IDF_FILE} is not {{words, texts, df}}")
        if raw["words"] != WORDS_SPEC:
            return None
        texts, counts = raw["texts"], raw["df"]
        if texts != len(self.chunks):
            raise version_damaged(
                self.store, self.version_id, f"{IDF_FILE} counts {texts} texts for {len(self.chunks)} chunks"
            )
        if not all(_is_a(n, int) and 0 < n <= texts for n in counts.values()):
            raise version_damaged(self.store, self.version_id, f"{IDF_FILE} holds a count outside 1..{texts}")
        return WordFrequencies(texts, counts)

    def bm25_folder(self) -> Path:
        return self.path / "bm25"

    def load_bm25(self) -> Any:
        """The segment's BM25 index (indexer.lexical.LexicalSegment), tokenized as the manifest says."""
        from indexer.lexical import LexicalSegment

        return LexicalSegment.load(self.bm25_folder(), self.manifest.index.lexical_tokenizer)


def open_version(store: Path, model_name: str | None = None, version_id: str | None = None) -> Version:
    """Read the format-2 version `version_id` (or the live one); with `model_name`, refuse one built with
    another model. Its records are mapped from records/, or read from the .jsonl files of a version
    without it."""
    version_id = version_id or current_version_id(store)
    if version_id is None:
        raise NoVersionError(f"no index in {store} yet: run ragqa-index first")
    return open_folder(store, versions_dir(store) / version_id, version_id, model_name)


def open_folder(store: Path, path: Path, name: str, model_name: str | None = None) -> Version:
    """The version (or segment) in `path`, named `name` in messages; see `open_version`."""
    manifest = read_manifest(path)
    if model_name is not None:
        check_model(store, manifest, model_name)
    if (path / RECORDS).is_dir():
        documents, chunks = _map_records(store, name, path / RECORDS)
    else:
        documents, chunks = _records_from_jsonl(store, name, path)
    return Version(store, name, path, manifest, documents, chunks)


def version_damaged(store: Path, version_id: str, problem: str) -> StoreError:
    return StoreError(
        f"version {version_id} of {store} is damaged: {problem}. "
        f"Rebuild it: ragqa-index --rebuild --store {store} PATH..."
    )


def _records_from_jsonl(store: Path, version_id: str, path: Path) -> tuple[DocumentTable, ChunkTable]:
    """The records of a version written before records/: parsed from its .jsonl files, then kept as
    the same columns (in memory) as a newer version's."""
    by_id: dict[str, DocumentRecord] = {}
    for value in _read_jsonl(path / "documents.jsonl"):
        by_id[value["doc_id"]] = DocumentRecord(**value)
    documents = list(by_id.values())
    del by_id
    chunks = []
    for row, value in enumerate(_read_jsonl(path / "chunks.jsonl")):
        chunk = ChunkRecord(
            chunk_id=value["chunk_id"],
            doc_id=value["doc_id"],
            start=value["start"],
            end=value["end"],
            sentences=tuple((s, e) for s, e in value["sentences"]),
            hash=value["hash"],
        )
        if chunk.chunk_id != row:
            raise version_damaged(
                store, version_id, f"chunk {chunk.chunk_id} is at row {row} of chunks.jsonl"
            )
        chunks.append(chunk)
    try:
        columns = _Columns.of(documents, chunks)
    except _UnknownDocument as exc:
        raise version_damaged(
            store, version_id, f"chunk {exc.chunk_id} belongs to an unknown document {exc.doc_id!r}"
        ) from None
    except UnicodeError as exc:
        raise version_damaged(store, version_id, f"a document's text is not valid Unicode: {exc}") from None
    return columns.tables()


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


# --- the records as columns ------------------------------------------------------------------


class FileBytes:
    """A file's bytes, read with pread when sliced: nothing of it is mapped into the process. (Mapped,
    each page-cache folio a read touches is counted whole in the process's RSS: on this kernel a few
    dozen requests' random reads of sentences.npy mapped all of it.) The page cache still keeps what is
    read often, outside the process. Safe to share between threads."""

    def __init__(self, path: Path | str, start: int = 0, size: int | None = None) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)
        self._start = start
        self._size = os.fstat(self._fd).st_size - start if size is None else size
        self.path = Path(path)

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, part: slice) -> bytes:
        start, stop, step = part.indices(self._size)
        if step != 1:
            raise ValueError("FileBytes reads consecutive bytes only")
        return self.read(start, max(0, stop - start))

    def read(self, offset: int, length: int) -> bytes:
        at = self._start + offset
        data = os.pread(self._fd, length, at) if length > 0 else b""
        if len(data) == length:  # a regular file reads whole, but at its end
            return data
        chunks, at, length = [data], at + len(data), length - len(data)
        while length > 0:
            data = os.pread(self._fd, length, at)
            if not data:
                raise StoreError(f"{self.path} ends before byte {at + length}: it was truncated")
            chunks.append(data)
            at, length = at + len(data), length - len(data)
        return b"".join(chunks)


class Rows:
    """The rows of a 2-D array, `rows(first, stop)` as a read-only array: read from its .npy file with
    pread when the array is a whole file's memory map (np.load(..., mmap_mode=...)), so that reading a
    few rows maps nothing (what the file holds: a change made to a copy-on-write map is not seen); sliced
    from memory otherwise."""

    def __init__(self, array: np.ndarray) -> None:
        self.dtype, self.shape = array.dtype, array.shape
        self._array: np.ndarray | None = array
        self._file: FileBytes | None = None
        filename = getattr(array, "filename", None) if isinstance(array, np.memmap) else None
        if filename and array.ndim == 2 and array.flags.c_contiguous:
            offset = int(getattr(array, "offset", 0))
            if os.path.getsize(filename) == offset + array.nbytes:  # the whole file's array, not a slice
                self._file, self._array = FileBytes(filename, offset, array.nbytes), None
        self._row_bytes = int(array.shape[1]) * array.dtype.itemsize if array.ndim == 2 else 0

    def rows(self, first: int, stop: int) -> np.ndarray:
        if self._array is not None:
            return self._array[first:stop]
        assert self._file is not None
        data = self._file.read(first * self._row_bytes, (stop - first) * self._row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(stop - first, self.shape[1])


_Text = bytes | FileBytes  # the documents' texts, UTF-8, end to end
_Strings = list[str] | np.ndarray  # a list, or a fixed-width ASCII array (the hashes)


def _string_at(column: _Strings, row: int) -> str:
    value = column[row]
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _strings_between(column: _Strings, first: int, stop: int) -> list[str]:
    if isinstance(column, list):
        return column[first:stop]
    return [value.decode("ascii") for value in column[first:stop].tolist()]


class DocumentTable(Mapping[str, DocumentRecord]):
    """A version's documents by id, in the order written, kept as columns: ids, titles, sources and
    metadata, and each text's place in one UTF-8 buffer (texts.bin, read when needed). A record, its text
    decoded, is made when it is asked for; the last few made are kept, as answering asks for the same
    documents several times. Safe to share between threads."""

    RECENT = 64

    def __init__(
        self,
        ids: list[str],
        titles: list[str],
        sources: list[str],
        metadata: list[dict[str, Any]],
        sha256: _Strings,
        offsets: np.ndarray,
        chars: np.ndarray,
        texts: _Text,
        prefixes: list[str] | None = None,
    ) -> None:
        self.ids = ids
        self.prefixes = prefixes  # what BM25 indexed in front of each document's chunks, when stored
        self.offsets = offsets  # int64, len + 1: document i's text is texts[offsets[i]:offsets[i + 1]]
        self.chars = chars  # int64: each text's length in characters
        self.texts = texts
        self._titles, self._sources, self._metadata, self._sha256 = titles, sources, metadata, sha256
        # ids are distinct (a reader refuses a version where they are not: `distinct_ids`)
        self._rows: dict[str, int] = dict(zip(ids, range(len(ids)), strict=True))
        self._recent: OrderedDict[int, DocumentRecord] = OrderedDict()
        self._lock = threading.Lock()

    def row(self, doc_id: str) -> int | None:
        """The document's row (its position in the order written), or None."""
        return self._rows.get(doc_id)

    @property
    def distinct_ids(self) -> bool:
        return len(self._rows) == len(self.ids)

    def text(self, row: int) -> str:
        return self.texts[int(self.offsets[row]) : int(self.offsets[row + 1])].decode("utf-8")

    def sha256(self, doc_id: str) -> str:
        """The document's sha256 without making its record; KeyError when there is none."""
        return _string_at(self._sha256, self._rows[doc_id])

    def record(self, row: int) -> DocumentRecord:
        with self._lock:
            found = self._recent.get(row)
            if found is not None:
                self._recent.move_to_end(row)
                return found
        record = self._make(row)
        with self._lock:
            self._recent[row] = record
            if len(self._recent) > self.RECENT:
                self._recent.popitem(last=False)
        return record

    def _make(self, row: int) -> DocumentRecord:
        return DocumentRecord(
            doc_id=self.ids[row],
            title=self._titles[row],
            source=self._sources[row],
            text=self.text(row),
            metadata=self._metadata[row],
            sha256=_string_at(self._sha256, row),
        )

    def records(self, first: int = 0, stop: int | None = None) -> Iterator[DocumentRecord]:
        """The documents at positions first..stop-1 (every one by default), in the order written (not
        kept); only those are read."""
        for row in range(*slice(first, stop).indices(len(self.ids))):
            yield self._make(row)

    def facts(self) -> Iterator[DocumentFacts]:
        """Every document's id, source and metadata, in the order written; no text is read."""
        for row, doc_id in enumerate(self.ids):
            yield DocumentFacts(doc_id, self._sources[row], self._metadata[row])

    def __getitem__(self, doc_id: str) -> DocumentRecord:
        return self.record(self._rows[doc_id])

    def get(self, doc_id: str, default: Any = None) -> Any:  # type: ignore[override]
        row = self._rows.get(doc_id)
        return default if row is None else self.record(row)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def values(self) -> ValuesView[DocumentRecord]:
        return _DocumentValues(self)


class _DocumentValues(ValuesView[DocumentRecord]):
    _mapping: DocumentTable

    def __iter__(self) -> Iterator[DocumentRecord]:
        return self._mapping.records()


class ChunkTable(Sequence[ChunkRecord]):
    """A version's chunks in id order (chunk_id is the row), kept as columns: each chunk's document
    row, its span in characters and in the texts' UTF-8 buffer, its sentence spans and its hash. A
    `ChunkRecord` is made when it is asked for; `text` decodes the chunk's text alone."""

    BLOCK = 4096  # rows converted at a time when iterating

    def __init__(
        self,
        documents: DocumentTable,
        document_rows: np.ndarray,
        spans: np.ndarray,
        byte_spans: np.ndarray,
        sentence_offsets: np.ndarray,
        sentence_spans: np.ndarray,
        hashes: _Strings,
    ) -> None:
        self.documents = documents
        self.document_rows = document_rows  # int64: the row of each chunk's document
        self.spans = spans  # int64 (chunks, 2): [start, end) in the document's text
        self.byte_spans = byte_spans  # int64 (chunks, 2): [start, end) in the texts' UTF-8 buffer
        self.sentence_offsets = sentence_offsets  # int64, chunks + 1: rows of sentence_spans (and vectors)
        self.sentence_spans = sentence_spans  # int64 (sentences, 2)
        self._hashes = hashes

    def __len__(self) -> int:
        return len(self.document_rows)

    @overload
    def __getitem__(self, index: int) -> ChunkRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[ChunkRecord]: ...

    def __getitem__(self, index: int | slice) -> ChunkRecord | list[ChunkRecord]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = int(index)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"chunk {index} out of range ({len(self)} chunks)")
        first, stop = self.sentence_offsets[row : row + 2].tolist()
        start, end = self.spans[row].tolist()
        return ChunkRecord(
            chunk_id=row,
            doc_id=self.documents.ids[self.document_rows[row]],
            start=start,
            end=end,
            sentences=tuple((s, e) for s, e in self.sentence_spans[first:stop].tolist()),
            hash=_string_at(self._hashes, row),
        )

    def __iter__(self) -> Iterator[ChunkRecord]:
        return self.records()

    def records(self, base: int = 0, skip: np.ndarray | None = None) -> Iterator[ChunkRecord]:
        """Every chunk in row order, numbered from `base` (a segment's first id in a commit), but the rows
        in `skip` (sorted: a segment's deleted chunks)."""
        skipped = set(skip.tolist()) if skip is not None and len(skip) else None
        for at in range(0, len(self), self.BLOCK):
            for record in self._records(at, min(at + self.BLOCK, len(self)), base):
                if skipped is None or record.chunk_id - base not in skipped:
                    yield record

    def _records(self, first: int, stop: int, id_base: int = 0) -> Iterator[ChunkRecord]:
        ids = self.documents.ids
        rows = self.document_rows[first:stop].tolist()
        spans = self.spans[first:stop].tolist()
        offsets = self.sentence_offsets[first : stop + 1].tolist()
        sentences = [(s, e) for s, e in self.sentence_spans[offsets[0] : offsets[-1]].tolist()]
        hashes = _strings_between(self._hashes, first, stop)
        base = offsets[0]
        for n, row in enumerate(rows):
            yield ChunkRecord(
                chunk_id=id_base + first + n,
                doc_id=ids[row],
                start=spans[n][0],
                end=spans[n][1],
                sentences=tuple(sentences[offsets[n] - base : offsets[n + 1] - base]),
                hash=hashes[n],
            )

    def text(self, chunk_id: int) -> str:
        """The chunk's text, document.text[start:end], decoded from its bytes alone."""
        start, end = self.byte_spans[chunk_id].tolist()
        return self.documents.texts[start:end].decode("utf-8")

    def hashes(self) -> Iterator[str]:
        for row in range(len(self)):
            yield _string_at(self._hashes, row)


class _UnknownDocument(Exception):
    def __init__(self, chunk_id: int, doc_id: str) -> None:
        super().__init__(chunk_id, doc_id)
        self.chunk_id, self.doc_id = chunk_id, doc_id


_ARRAYS = (  # records/<name>.npy: (name, dimensions)
    ("document_offsets", 1),
    ("document_chars", 1),
    ("chunk_document", 1),
    ("chunk_spans", 2),
    ("chunk_bytes", 2),
    ("chunk_sentences", 1),
    ("sentence_spans", 2),
)


@dataclass
class _Columns:
    """The records as columns, in memory: made from records to be written to records/ (or to serve a
    version written before records/ existed)."""

    doc_ids: list[str]
    titles: list[str]
    sources: list[str]
    metadata: list[dict[str, Any]]
    sha256: list[str]
    texts: bytes
    arrays: dict[str, np.ndarray]  # the _ARRAYS
    chunk_hash: list[str]
    prefixes: list[str] | None = None  # what BM25 indexed in front of each document's chunks

    @classmethod
    def of(
        cls,
        documents: Sequence[DocumentRecord],
        chunks: Sequence[ChunkRecord],
        prefixes: list[str] | None = None,
    ) -> _Columns:
        """_UnknownDocument for a chunk of no document; a span outside its document is kept as it is
        (the reader refuses it), its byte span clipped to the document."""
        encoded = [d.text.encode("utf-8") for d in documents]
        offsets = np.zeros(len(documents) + 1, np.int64)
        offsets[1:] = np.cumsum(np.array([len(b) for b in encoded], dtype=np.int64))
        chars = np.array([len(d.text) for d in documents], dtype=np.int64)
        rows: dict[str, int] = {}
        for row, document in enumerate(documents):
            rows.setdefault(document.doc_id, row)
        chunk_document = np.zeros(len(chunks), np.int64)
        for n, chunk in enumerate(chunks):
            found = rows.get(chunk.doc_id)
            if found is None:
                raise _UnknownDocument(n, chunk.doc_id)
            chunk_document[n] = found
        spans = np.array([(c.start, c.end) for c in chunks], dtype=np.int64).reshape(-1, 2)
        sentence_offsets = np.zeros(len(chunks) + 1, np.int64)
        sentence_offsets[1:] = np.cumsum(np.array([len(c.sentences) for c in chunks], dtype=np.int64))
        sentence_spans = np.array([s for c in chunks for s in c.sentences], dtype=np.int64).reshape(-1, 2)
        return cls(
            doc_ids=[d.doc_id for d in documents],
            titles=[d.title for d in documents],
            sources=[d.source for d in documents],
            metadata=[d.metadata for d in documents],
            sha256=[d.sha256 for d in documents],
            texts=b"".join(encoded),
            arrays={
                "document_offsets": offsets,
                "document_chars": chars,
                "chunk_document": chunk_document,
                "chunk_spans": spans,
                "chunk_bytes": _byte_spans(documents, chunk_document, spans, offsets, chars),
                "chunk_sentences": sentence_offsets,
                "sentence_spans": sentence_spans,
            },
            chunk_hash=[c.hash for c in chunks],
            prefixes=prefixes,
        )

    def tables(self) -> tuple[DocumentTable, ChunkTable]:
        a = self.arrays
        sha256, hashes = _ascii_column(self.sha256), _ascii_column(self.chunk_hash)
        documents = DocumentTable(
            self.doc_ids,
            self.titles,
            self.sources,
            self.metadata,
            self.sha256 if sha256 is None else sha256,
            a["document_offsets"],
            a["document_chars"],
            self.texts,
            self.prefixes,
        )
        chunks = ChunkTable(
            documents,
            a["chunk_document"],
            a["chunk_spans"],
            a["chunk_bytes"],
            a["chunk_sentences"],
            a["sentence_spans"],
            self.chunk_hash if hashes is None else hashes,
        )
        return documents, chunks

    def chunk_texts(self) -> Iterator[str]:
        for start, end in self.arrays["chunk_bytes"].tolist():
            yield self.texts[start:end].decode("utf-8")

    def write(self, folder: Path) -> None:
        folder.mkdir()
        strings: dict[str, list[Any]] = {
            "doc_id": self.doc_ids,
            "title": self.titles,
            "source": self.sources,
            "metadata": self.metadata,
        }
        if self.prefixes is not None:
            strings["prefix"] = self.prefixes
        arrays = dict(self.arrays)
        for name, values in (("document_sha256", self.sha256), ("chunk_hash", self.chunk_hash)):
            column = _ascii_column(values)
            if column is None:
                strings["sha256" if name == "document_sha256" else name] = values
            else:
                arrays[name] = column
        with open(folder / "strings.json", "w", encoding="utf-8") as fh:
            json.dump(strings, fh, ensure_ascii=False, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        with open(folder / "texts.bin", "wb") as fh:
            fh.write(self.texts)
            fh.flush()
            os.fsync(fh.fileno())
        for name, array in arrays.items():
            with open(folder / f"{name}.npy", "wb") as fh:
                np.save(fh, array)
                fh.flush()
                os.fsync(fh.fileno())
        fsync_dir(folder)


def _ascii_column(values: Sequence[str]) -> np.ndarray | None:
    """Strings as one fixed-width bytes array when they are short ASCII without NUL (hashes); else None."""
    joined = "".join(values)
    if not joined.isascii() or "\x00" in joined:
        return None
    width = max((len(v) for v in values), default=1) or 1
    if width > 256:
        return None
    return np.array([v.encode("ascii") for v in values], dtype=f"S{width}")


def _byte_spans(
    documents: Sequence[DocumentRecord],
    rows: np.ndarray,
    spans: np.ndarray,
    offsets: np.ndarray,
    chars: np.ndarray,
) -> np.ndarray:
    """Each chunk's [start, end) in the texts' UTF-8 buffer (spans clipped to their document)."""
    if not len(rows):
        return np.zeros((0, 2), np.int64)
    clipped = np.clip(spans, 0, chars[rows][:, None])
    result = offsets[rows][:, None] + clipped
    ascii_text = (offsets[1:] - offsets[:-1]) == chars  # as many bytes as characters
    last, before = -1, np.zeros(1, np.int64)
    for n in np.flatnonzero(~ascii_text[rows]).tolist():
        row = int(rows[n])
        if row != last:  # a document's chunks are consecutive: each text is measured once
            last, before = row, _utf8_positions(documents[row].text)
        result[n] = offsets[row] + before[clipped[n]]
    return result


def _utf8_positions(text: str) -> np.ndarray:
    """The offset in text.encode("utf-8") of every character offset 0..len(text)."""
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (points >= 0x80).astype(np.int64) + (points >= 0x800) + (points >= 0x10000)
    before = np.zeros(len(points) + 1, np.int64)
    before[1:] = np.cumsum(widths)
    return before


def _map_records(store: Path, version_id: str, folder: Path) -> tuple[DocumentTable, ChunkTable]:
    """records/ mapped into memory, its columns checked against each other (StoreError when damaged)."""

    def damaged(problem: str) -> StoreError:
        return version_damaged(store, version_id, f"{RECORDS}/{problem}")

    try:
        with open(folder / "strings.json", encoding="utf-8") as fh:
            strings = json.load(fh)
        # mapped, as plain arrays (a memmap's every index goes through its Python subclass)
        arrays = {name: np.asarray(np.load(folder / f"{name}.npy", mmap_mode="r")) for name, _ in _ARRAYS}
        sha256 = _strings_column(strings, "sha256", folder / "document_sha256.npy")
        hashes = _strings_column(strings, "chunk_hash", folder / "chunk_hash.npy")
        texts = _open_file(folder / "texts.bin")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise damaged(f" cannot be read: {exc}") from exc
    if not isinstance(strings, dict) or not all(
        isinstance(strings.get(k), list) for k in ("doc_id", "title", "source", "metadata")
    ):
        raise damaged("strings.json is not {doc_id, title, source, metadata}")
    for name, dimensions in _ARRAYS:
        array = arrays[name]
        if array.dtype != np.int64 or array.ndim != dimensions or (dimensions == 2 and array.shape[1] != 2):
            raise damaged(f"{name}.npy is {array.dtype} {array.shape}")
    ids = strings["doc_id"]
    n_documents, n_chunks = len(ids), len(arrays["chunk_document"])
    lengths = {
        "title": len(strings["title"]),
        "source": len(strings["source"]),
        "metadata": len(strings["metadata"]),
        "sha256": len(sha256),
        "document_chars": len(arrays["document_chars"]),
        "document_offsets": len(arrays["document_offsets"]) - 1,
    }
    chunk_lengths = {
        "chunk_spans": len(arrays["chunk_spans"]),
        "chunk_bytes": len(arrays["chunk_bytes"]),
        "chunk_sentences": len(arrays["chunk_sentences"]) - 1,
        "chunk_hash": len(hashes),
    }
    wrong = [f"{k} ({v})" for k, v in lengths.items() if v != n_documents] + [
        f"{k} ({v})" for k, v in chunk_lengths.items() if v != n_chunks
    ]
    if wrong:
        raise damaged(f" holds {n_documents} documents and {n_chunks} chunks, but {', '.join(wrong)}")
    offsets, chunk_sentences = arrays["document_offsets"], arrays["chunk_sentences"]
    if offsets[0] != 0 or np.any(offsets[1:] < offsets[:-1]) or int(offsets[-1]) != len(texts):
        raise damaged(f"document_offsets.npy does not cut texts.bin ({len(texts)} bytes) into the texts")
    if (
        chunk_sentences[0] != 0
        or np.any(chunk_sentences[1:] < chunk_sentences[:-1])
        or int(chunk_sentences[-1]) != len(arrays["sentence_spans"])
    ):
        raise damaged("chunk_sentences.npy does not cut sentence_spans.npy into the chunks' sentences")
    rows, byte_spans = arrays["chunk_document"], arrays["chunk_bytes"]
    if n_chunks:
        if rows.min() < 0 or rows.max() >= n_documents:
            raise damaged("chunk_document.npy names a document row that does not exist")
        if np.any(byte_spans[:, 0] < offsets[rows]) or np.any(byte_spans[:, 1] > offsets[rows + 1]):
            raise damaged("chunk_bytes.npy puts a chunk outside its document's text")
    documents = DocumentTable(
        ids,
        strings["title"],
        strings["source"],
        strings["metadata"],
        sha256,
        offsets,
        arrays["document_chars"],
        texts,
        strings["prefix"]
        if isinstance(strings.get("prefix"), list) and len(strings["prefix"]) == n_documents
        else None,
    )
    if not documents.distinct_ids:
        raise damaged("strings.json holds a document id twice")
    chunks = ChunkTable(
        documents, rows, arrays["chunk_spans"], byte_spans, chunk_sentences, arrays["sentence_spans"], hashes
    )
    return documents, chunks


def _strings_column(strings: Any, name: str, path: Path) -> _Strings:
    """A column of strings.json, or else its fixed-width ASCII array."""
    if isinstance(strings, dict) and isinstance(strings.get(name), list):
        column: list[str] = strings[name]
        return column
    array: np.ndarray = np.asarray(np.load(path, mmap_mode="r"))
    return array


def _open_file(path: Path) -> _Text:
    """A file's bytes, read when sliced (an empty file as b"")."""
    texts = FileBytes(path)
    return texts if len(texts) else b""


def _write_word_frequencies(path: Path, counted: WordFrequencies) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(
            {"words": WORDS_SPEC, "texts": counted.texts, "df": counted.counts},
            fh,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        fh.flush()
        os.fsync(fh.fileno())


# --- embedding cache -------------------------------------------------------------------------


class EmbeddingCache:
    """A chunk's vectors, row 0 the chunk's and then one per sentence, keyed by (model, chunk hash)
    and shared by every version of a store.

    SQLite keeps each write atomic, so vectors saved before a crash are reused by the next run."""

    def __init__(self, store: Path) -> None:
        folder = store / "cache"
        folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(folder / "embeddings.sqlite")
        # WAL: each slab's commit is still atomic and survives a killed process; only an OS crash can
        # lose the last commits (never corrupt the file), and they are simply embedded again.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS embeddings ("
            " model TEXT NOT NULL, hash TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model, hash))"
        )
        self.db.commit()

    def get_many(self, model: str, hashes: Iterable[str], dimension: int) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        for at in range(0, len(wanted), 500):
            part = wanted[at : at + 500]
            marks = ",".join("?" * len(part))
            rows = self.db.execute(
                f"SELECT hash, vector FROM embeddings WHERE model = ? AND hash IN ({marks})", [model, *part]
            )
            for key, blob in rows:
                vectors = np.frombuffer(blob, dtype=np.float32)
                if vectors.size and vectors.size % dimension == 0:
                    found[key] = vectors.reshape(-1, dimension)
        return found

    def put_many(self, model: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO embeddings (model, hash, vector) VALUES (?, ?, ?)",
                [(model, key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in items],
            )

    def keep_only(self, model: str, hashes: set[str]) -> int:
        """Forget vectors that no kept version uses, so the cache does not grow without end."""
        stale = [
            (model, key)
            for (key,) in self.db.execute("SELECT hash FROM embeddings WHERE model = ?", [model])
            if key not in hashes
        ]
        with self.db:
            self.db.executemany("DELETE FROM embeddings WHERE model = ? AND hash = ?", stale)
            self.db.execute("DELETE FROM embeddings WHERE model != ?", [model])
        return len(stale)

    def close(self) -> None:
        self.db.close()
