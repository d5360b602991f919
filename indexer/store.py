"""The store's on-disk format, written by the indexer. The service reads it only through the
`StoreReader` interface of indexer.reader, whose local implementation loads the files below.

    <store>/CURRENT              the live version's id; replaced atomically to publish
    <store>/versions/<id>/       one complete, immutable index:
        manifest.json            format, model, chunker settings, the lexical tokenizer's settings,
                                 counts, created time (the `Manifest` dataclass)
        documents.jsonl          {"doc_id", "title", "source", "text", "metadata", "sha256"} a line
        chunks.jsonl             {"chunk_id", "doc_id", "start", "end", "sentences", "hash"} a line;
                                 chunk_id is the row in index.faiss, sentences are [start, end] pairs
        files.json               the files each document came from, with size and mtime (for reuse)
        index.faiss              inner-product index of the normalised chunk vectors
        sentences.npy            float32 vectors of every chunk's sentences, in chunk order (the
                                 sentences of chunk i follow those of chunks 0..i-1)
        bm25/                    bm25s index and its tokenizer's vocabulary, over the same texts,
                                 tokenized as the manifest's index.lexical_tokenizer says
    <store>/cache/embeddings.sqlite   a chunk's vector and its sentences' vectors, keyed by
                                      (model, sha256 of the embedded text and sentence spans)
    <store>/.lock                held by the one indexer that may write

A version is written under versions/.tmp-<id>, flushed, renamed, and only then published by
replacing CURRENT, so a crash at any moment leaves the previous version live and intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import types
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

FORMAT_VERSION = 2
Span = tuple[int, int]
TMP_PREFIX = ".tmp-"


class StoreError(Exception):
    pass


class ModelMismatchError(StoreError):
    pass


class StoreBusyError(StoreError):
    pass


class NoVersionError(StoreError):
    pass


@dataclass(frozen=True)
class DocumentRecord:
    doc_id: str
    title: str
    source: str
    text: str
    metadata: dict[str, Any]
    sha256: str


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


@dataclass(frozen=True)
class ModelSpec:
    """The embedding model every vector of the version comes from."""

    name: str
    dimension: int
    max_seq_length: int
    normalized: bool = True  # L2-normalised vectors: inner product is cosine


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
        """Read a manifest; a missing or ill-typed field is a StoreError, an unknown one is ignored."""
        return _from_json(cls, value, where, "")


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
    """Write a complete version next to the live one and flush it; not yet published."""
    import faiss

    _check_consistent(data)
    final = versions_dir(store) / version_id
    tmp = versions_dir(store) / f"{TMP_PREFIX}{version_id}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    _write_jsonl(tmp / "documents.jsonl", (asdict(d) for d in data.documents))
    _write_jsonl(tmp / "chunks.jsonl", (_chunk_row(c) for c in data.chunks))
    _write_json(tmp / "files.json", {"files": [asdict(f) for f in data.files]})

    vectors = np.ascontiguousarray(data.vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(data.manifest.model.dimension)
    if len(vectors):
        index.add(vectors)
    faiss.write_index(index, str(tmp / "index.faiss"))
    _fsync_file(tmp / "index.faiss")

    with open(tmp / "sentences.npy", "wb") as fh:
        np.save(fh, np.ascontiguousarray(data.sentence_vectors, dtype=np.float32))
        fh.flush()
        os.fsync(fh.fileno())
    _write_bm25(tmp / "bm25", data.bm25_texts, data.manifest.index.lexical_tokenizer)
    write_manifest(tmp, data.manifest)  # last: a version without one is incomplete
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(versions_dir(store))
    return final


def _check_consistent(data: VersionData) -> None:
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


def publish(store: Path, version_id: str) -> None:
    """Make `version_id` live: one atomic replace of CURRENT."""
    tmp = store / "CURRENT.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(version_id + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, store / "CURRENT")
    _fsync_dir(store)


def remove_old_versions(store: Path, keep: Iterable[str]) -> list[str]:
    """Delete every version but `keep`, and any half-written one (the caller holds the lock)."""
    keep = set(keep)
    removed: list[str] = []
    folder = versions_dir(store)
    if not folder.exists():
        return removed
    for entry in folder.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _chunk_row(chunk: ChunkRecord) -> dict[str, Any]:
    row = asdict(chunk)
    row["sentences"] = [list(s) for s in chunk.sentences]
    return row


def bm25_tokenizer(spec: LexicalTokenizerSpec) -> Any:
    """The lexical index's tokenizer, as the manifest describes it (without its vocabulary)."""
    if spec.library != "bm25s":
        raise StoreError(f"unknown lexical index library {spec.library!r}; this ragqa reads bm25s")
    from bm25s.tokenization import Tokenizer

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return Tokenizer(stopwords=spec.stopwords, lower=spec.lower)


def _write_bm25(folder: Path, texts: list[str], spec: LexicalTokenizerSpec) -> None:
    import bm25s

    tokenizer = bm25_tokenizer(spec)
    tokens = tokenizer.tokenize(texts, return_as="ids", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    retriever.save(str(folder))
    tokenizer.save_vocab(str(folder))
    tokenizer.save_stopwords(str(folder))
    for path in folder.iterdir():
        _fsync_file(path)


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


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync_file(path)


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


@dataclass
class Version:
    """One published version's records, read back: what the indexer builds on, and what a reader
    (indexer.reader) loads its indexes next to."""

    store: Path
    version_id: str
    path: Path
    manifest: Manifest
    documents: dict[str, DocumentRecord]
    chunks: list[ChunkRecord]
    files: list[FileRecord]

    def chunk_text(self, chunk: ChunkRecord) -> str:
        return self.documents[chunk.doc_id].text[chunk.start : chunk.end]

    def load_faiss(self) -> Any:
        import faiss

        return faiss.read_index(str(self.path / "index.faiss"))

    def load_sentence_vectors(self) -> np.ndarray:
        """Every chunk's sentences' vectors, in chunk order: not yet checked against the chunks."""
        vectors: np.ndarray = np.load(self.path / "sentences.npy")
        return vectors

    def bm25_folder(self) -> Path:
        return self.path / "bm25"

    def load_bm25(self) -> tuple[Any, Any]:
        """The BM25 index and its tokenizer, set up as the manifest says and with its vocabulary."""
        import bm25s

        tokenizer = bm25_tokenizer(self.manifest.index.lexical_tokenizer)
        retriever = bm25s.BM25.load(str(self.bm25_folder()))
        tokenizer.load_vocab(str(self.bm25_folder()))
        return retriever, tokenizer


def open_version(store: Path, model_name: str | None = None, version_id: str | None = None) -> Version:
    """Read the live version (or `version_id`); with `model_name`, refuse one built with another model."""
    version_id = version_id or current_version_id(store)
    if version_id is None:
        raise NoVersionError(f"no index in {store} yet: run ragqa-index first")
    path = versions_dir(store) / version_id
    manifest = read_manifest(path)
    if model_name is not None:
        check_model(store, manifest, model_name)
    documents = {}
    for row in _read_jsonl(path / "documents.jsonl"):
        documents[row["doc_id"]] = DocumentRecord(**row)
    chunks = [
        ChunkRecord(
            chunk_id=row["chunk_id"],
            doc_id=row["doc_id"],
            start=row["start"],
            end=row["end"],
            sentences=tuple((s, e) for s, e in row["sentences"]),
            hash=row["hash"],
        )
        for row in _read_jsonl(path / "chunks.jsonl")
    ]
    with open(path / "files.json", encoding="utf-8") as fh:
        files = [FileRecord(**{**f, "doc_ids": tuple(f["doc_ids"])}) for f in json.load(fh)["files"]]
    return Version(store, version_id, path, manifest, documents, chunks, files)


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


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
