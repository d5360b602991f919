"""The store as segments (format 3): what an update costs follows what it changes, not the corpus.

Lucene's design, and Milvus's sealed segments: a version of the store is a **commit**, a small file
listing immutable **segments**, each a complete little index of some documents (the files a format-2
version held: records/, index.faiss, sentences.npy, bm25/, idf.json, files.json, manifest.json).

    <store>/CURRENT                  the live commit's id; replaced atomically to publish
    <store>/commits/<id>.json        a commit: the manifest (model, chunker, live counts) and its
                                     segments in order, each with its counts, the size and CRC-32 of
                                     every file it holds, and its deletions
    <store>/segments/<name>/         one segment, never changed once written
    <store>/tombstones/<name>.<id>.npy   the rows of a segment's documents deleted as of commit <id>
                                     (sorted int64; the segment's chunks of those documents go with
                                     them), with its size and CRC-32 in the commit

An index run adds at most one segment (the documents new or changed since the live commit) and writes
a tombstone file for each segment that lost documents: an update of one document writes that document's
segment, a tombstone of a few bytes and a commit of a few hundred, whatever the corpus. Merges then
rewrite a few segments into one (`merge_plan`: segments of one size class, once there are MERGE_FACTOR
of them; a segment with more deleted than live documents), reading their live rows' records and vectors
(nothing is embedded again), and commit again. A segment and a tombstone are written under a temporary
name, flushed and renamed; the commit is written and flushed before CURRENT is replaced; so a crash at
any point, a merge's included, leaves the previous commit live and complete, and the next run removes
what the crashed one left (`collect_garbage`). A reader verifies each file's size and CRC-32 against
the commit when it opens a segment (truncation and corruption are refused before anything is served).

A store written before segments (format 2: `versions/<id>/` and CURRENT naming it) is read as one
segment without deletions; the next index run migrates it (`migrate`: its files are hard-linked into a
segment, not copied) and says so in its log.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from indexer import store as st
from indexer.text import WordFrequencies, summed, without, word_frequencies

log = logging.getLogger("ragqa.indexer")

FORMAT = 3
COMMITS, SEGMENTS, TOMBSTONES = "commits", "segments", "tombstones"
BLOCK = 4 << 20  # bytes read at a time when summing a file (into one buffer a file)
MERGE_FACTOR = 8  # segments of one size class merged into one once there are this many
MAX_DELETED_SHARE = 0.5  # a segment with a larger share of deleted documents is rewritten


@dataclass(frozen=True)
class FileSum:
    """A file's size in bytes and its CRC-32 (zlib's, as Lucene's footers): enough to find a truncated
    or damaged file, which is what a checksum here is for (not tampering)."""

    size: int
    crc32: int


@dataclass(frozen=True)
class Deletions:
    """A segment's deleted documents as of one commit: `file` (in tombstones/) holds their rows."""

    file: str
    documents: int
    chunks: int
    sum: FileSum


@dataclass(frozen=True)
class SegmentEntry:
    """One segment of a commit: its counts (deleted ones included), its files' sums (paths relative to
    the segment's folder) and its deletions, if any."""

    name: str
    documents: int
    chunks: int
    sentences: int
    files: dict[str, FileSum]
    deletions: Deletions | None = None

    @property
    def live_documents(self) -> int:
        return self.documents - (self.deletions.documents if self.deletions else 0)

    @property
    def live_chunks(self) -> int:
        return self.chunks - (self.deletions.chunks if self.deletions else 0)


@dataclass(frozen=True)
class Commit:
    """commits/<version>.json: the manifest of the whole (format 3, counts of what is live) and the
    segments in order (their chunk ids follow one another in this order). `legacy` marks a format-2
    version read as one segment (its folder is versions/<version>, its files have no sums)."""

    version: str
    manifest: st.Manifest
    segments: tuple[SegmentEntry, ...]
    legacy: bool = False

    def folder(self, store: Path, entry: SegmentEntry) -> Path:
        if self.legacy:
            return st.versions_dir(store) / entry.name
        return store / SEGMENTS / entry.name

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": self.version,
            "manifest": self.manifest.to_json(),
            "segments": [asdict(s) for s in self.segments],
        }

    @classmethod
    def from_json(cls, value: Any, where: str) -> Commit:
        try:
            if value.get("format") != FORMAT:
                raise st.StoreError(
                    f"{where} has store format {value.get('format')!r}; this ragqa reads format {FORMAT}"
                )
            segments = tuple(_segment_entry(s) for s in value["segments"])
            return cls(str(value["version"]), st.Manifest.from_json(value["manifest"], where), segments)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise st.StoreError(f"{where} is not a commit: {exc!r}") from exc


def _segment_entry(value: dict[str, Any]) -> SegmentEntry:
    deletions = value.get("deletions")
    return SegmentEntry(
        name=str(value["name"]),
        documents=int(value["documents"]),
        chunks=int(value["chunks"]),
        sentences=int(value["sentences"]),
        files={str(k): FileSum(int(v["size"]), int(v["crc32"])) for k, v in value["files"].items()},
        deletions=None
        if deletions is None
        else Deletions(
            str(deletions["file"]),
            int(deletions["documents"]),
            int(deletions["chunks"]),
            FileSum(int(deletions["sum"]["size"]), int(deletions["sum"]["crc32"])),
        ),
    )


# --- sums ------------------------------------------------------------------------------------


def file_sum(path: Path) -> FileSum:
    crc, size = 0, 0
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while read := fh.readinto(buffer):
            crc = zlib.crc32(view[:read], crc)  # zlib releases the GIL: files are summed in parallel
            size += read
    return FileSum(size, crc)


def _files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def sum_folder(folder: Path) -> dict[str, FileSum]:
    """Every file under `folder` (relative path → sum)."""
    names = _files_of(folder)
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(names, pool.map(lambda n: file_sum(folder / n), names), strict=True))


def verify_folder(folder: Path, files: dict[str, FileSum], where: str) -> None:
    """Every file the commit lists, with its size and CRC-32; a StoreError that names the first file
    missing, truncated (or grown) or damaged."""
    names = sorted(files)

    def check(name: str) -> str | None:
        path = folder / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        expected = files[name]
        if size != expected.size:
            return f"{name} holds {size} bytes, not the {expected.size} written (truncated or damaged)"
        if file_sum(path).crc32 != expected.crc32:
            return f"{name} fails its checksum (CRC-32): it was damaged after it was written"
        return None

    with ThreadPoolExecutor(2) as pool:
        problems = [p for p in pool.map(check, names) if p]
    if problems:
        raise st.StoreError(f"{where} is damaged: {problems[0]}. Rebuild it: ragqa-index --rebuild")


# --- commits ---------------------------------------------------------------------------------


def commit_path(store: Path, version: str) -> Path:
    return store / COMMITS / f"{version}.json"


def read_commit(store: Path, version: str | None = None) -> Commit:
    """The commit `version` (the live one by default); a format-2 version as a legacy commit of one
    segment. NoVersionError when the store has none, StoreError when it cannot be read."""
    version = version or st.current_version_id(store)
    if version is None:
        raise st.NoVersionError(f"no index in {store} yet: run ragqa-index first")
    path = commit_path(store, version)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except FileNotFoundError:
        return _legacy_commit(store, version)
    except (OSError, ValueError) as exc:
        raise st.StoreError(f"{path} cannot be read: {exc}") from exc
    return Commit.from_json(raw, str(path))


def _legacy_commit(store: Path, version: str) -> Commit:
    manifest = st.read_manifest(st.versions_dir(store) / version)
    counts = manifest.counts
    entry = SegmentEntry(version, counts.documents, counts.chunks, counts.sentences, {})
    return Commit(version, manifest, (entry,), legacy=True)


def _write_json_durably(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{st.TMP_PREFIX}{path.name}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, ensure_ascii=False, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    st.fsync_dir(path.parent)


def publish_commit(store: Path, commit: Commit) -> None:
    """Write the commit durably, then make it live: one atomic replace of CURRENT."""
    _write_json_durably(commit_path(store, commit.version), commit.to_json())
    st.publish(store, commit.version)


def new_commit(manifest: st.Manifest, segments: Sequence[SegmentEntry]) -> Commit:
    """A commit of these segments under a new id, its manifest's counts the live ones (`manifest` gives
    the rest)."""
    version = st.new_version_id()
    counts = st.Counts(
        sum(s.live_documents for s in segments),
        sum(s.live_chunks for s in segments),
        sum(s.sentences for s in segments),  # rows stored, deleted chunks' included
    )
    manifest = replace(manifest, format=FORMAT, counts=counts, version=version)
    return Commit(version, manifest, tuple(segments))


# --- segments and tombstones -----------------------------------------------------------------


def new_segment_name() -> str:
    return f"{st.new_version_id()}-{uuid.uuid4().hex[:8]}"


def write_segment(
    store: Path,
    data: st.VersionData,
    words: WordFrequencies | None = None,
    average_length: float | None = None,
) -> SegmentEntry:
    """Write a new segment (under a temporary name, flushed, renamed) and sum its files. `words` and
    `average_length` as for `indexer.store.write_folder` (the corpus's average: `average_length`)."""
    name = new_segment_name()
    folder = store / SEGMENTS / name
    st.write_folder(
        folder, replace(data, manifest=replace(data.manifest, version=name)), words, average_length
    )
    counts = data.manifest.counts
    return SegmentEntry(name, counts.documents, counts.chunks, counts.sentences, sum_folder(folder))


def write_deletions(store: Path, entry: SegmentEntry, rows: np.ndarray, chunks: int) -> SegmentEntry:
    """The entry with these document rows deleted (sorted, distinct; those deleted before included):
    a new tombstone file, named for the segment and a new id."""
    folder = store / TOMBSTONES
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{entry.name}.{st.new_version_id()}-{uuid.uuid4().hex[:6]}.npy"
    tmp = folder / f"{st.TMP_PREFIX}{name}"
    with open(tmp, "wb") as fh:
        np.save(fh, np.asarray(rows, np.int64))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / name)
    st.fsync_dir(folder)
    return replace(entry, deletions=Deletions(name, len(rows), chunks, file_sum(folder / name)))


def read_deletions(store: Path, commit: Commit, entry: SegmentEntry) -> np.ndarray:
    """The segment's deleted document rows (sorted int64; empty when none), checked against the commit."""
    if entry.deletions is None:
        return np.zeros(0, np.int64)
    path = store / TOMBSTONES / entry.deletions.file
    where = f"the deletions of segment {entry.name} in commit {commit.version} of {store}"
    verify_folder(path.parent, {path.name: entry.deletions.sum}, where)
    rows = np.load(path)
    if (
        rows.dtype != np.int64
        or rows.ndim != 1
        or len(rows) != entry.deletions.documents
        or (len(rows) and (rows.min() < 0 or rows.max() >= entry.documents))
        or bool(np.any(rows[1:] <= rows[:-1]))
    ):
        raise st.StoreError(f"{where} are not {entry.deletions.documents} sorted document rows")
    return rows


def deleted_chunks(chunk_documents: np.ndarray, deleted_rows: np.ndarray) -> np.ndarray:
    """The chunks (sorted local ids) of the deleted document rows."""
    if not len(deleted_rows):
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.isin(chunk_documents, deleted_rows)).astype(np.int64)


# --- the indexer's view of the live commit ---------------------------------------------------


@dataclass
class LiveSegment:
    """A segment of the live commit as the indexer reads it: its records and its deleted rows."""

    entry: SegmentEntry
    version: st.Version
    deleted: np.ndarray  # sorted document rows

    @cached_property
    def live(self) -> np.ndarray:
        """A bool per document row: not deleted."""
        mask = np.ones(self.entry.documents, bool)
        mask[self.deleted] = False
        return mask

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.live)


@dataclass
class LiveStore:
    """The live commit, its segments' records opened (mapped: nothing is read until asked)."""

    store: Path
    commit: Commit
    segments: list[LiveSegment]

    @classmethod
    def open(cls, store: Path) -> LiveStore:
        commit = read_commit(store)
        segments = []
        for entry in commit.segments:
            folder = commit.folder(store, entry)
            version = st.open_folder(store, folder, entry.name)
            segments.append(LiveSegment(entry, version, read_deletions(store, commit, entry)))
        return cls(store, commit, segments)

    @property
    def manifest(self) -> st.Manifest:
        return self.commit.manifest

    def find(self, doc_id: str) -> tuple[int, int] | None:
        """(segment index, document row) of the live document with this id, or None."""
        for n in range(len(self.segments) - 1, -1, -1):  # a document lives once; the newest first
            segment = self.segments[n]
            row = segment.version.documents.row(doc_id)
            if row is not None and segment.live[row]:
                return n, row
        return None

    def document_ids(self) -> Iterator[str]:
        for segment in self.segments:
            ids, live = segment.version.documents.ids, segment.live
            yield from (doc_id for row, doc_id in enumerate(ids) if live[row])

    def sha256(self, doc_id: str) -> str | None:
        at = self.find(doc_id)
        return None if at is None else self.segments[at[0]].version.documents.sha256(doc_id)

    def document(self, doc_id: str) -> st.DocumentRecord:
        at = self.find(doc_id)
        if at is None:
            raise KeyError(doc_id)
        return self.segments[at[0]].version.documents.record(at[1])

    @cached_property
    def files(self) -> dict[tuple[str, str], st.FileRecord]:
        """Every file a segment records, by (path, root); the newest segment's record wins."""
        found: dict[tuple[str, str], st.FileRecord] = {}
        for segment in self.segments:
            for record in segment.version.files:
                found[(record.path, record.root)] = record
        return found

    def average_length(self) -> float | None:
        """The average BM25 text length over every segment's texts (deleted ones included, as in the
        statistics of a search), or None when a segment does not record its total (one written
        before it did)."""
        total, texts = 0, 0
        for segment in self.segments:
            lexical = segment.version.load_bm25()
            if lexical.total_length is None:
                return None
            total, texts = total + lexical.total_length, texts + lexical.size
        return total / texts if texts else None

    def chunk_hashes(self) -> set[str]:
        hashes: set[str] = set()
        for segment in self.segments:
            hashes.update(segment.version.chunks.hashes())
        return hashes


# --- merges ----------------------------------------------------------------------------------


def size_class(live_chunks: int) -> int:
    """Segments whose live chunks are within a factor MERGE_FACTOR of each other share a class."""
    return int(math.log(max(live_chunks, 1), MERGE_FACTOR))


def merge_plan(entries: Sequence[SegmentEntry]) -> list[int]:
    """The segments (their positions) to merge into one now, or [] when none need it: the smallest
    class holding MERGE_FACTOR segments or more (all of it), else a segment with more than
    MAX_DELETED_SHARE of its documents deleted (alone, to drop them), else nothing."""
    classes: dict[int, list[int]] = {}
    for n, entry in enumerate(entries):
        classes.setdefault(size_class(entry.live_chunks), []).append(n)
    for cls in sorted(classes):
        if len(classes[cls]) >= MERGE_FACTOR:
            return classes[cls]
    for n, entry in enumerate(entries):
        if (
            entry.documents
            and entry.deletions
            and entry.deletions.documents > MAX_DELETED_SHARE * entry.documents
        ):
            return [n]
    return []


def merged_data(
    live: LiveStore, positions: Sequence[int], prefix_of: Callable[[str], str]
) -> tuple[st.VersionData, WordFrequencies]:
    """The live documents of these segments as one segment's data, with their chunks, vectors and
    sentence vectors as stored (nothing embedded again) and the word counts of their chunks.
    `prefix_of(title)`: what BM25 indexes in front of a chunk, for a segment that does not store it
    (one migrated from format 2)."""
    from indexer import dense

    documents: list[st.DocumentRecord] = []
    chunks: list[st.ChunkRecord] = []
    files: list[st.FileRecord] = []
    texts: list[str] = []
    vectors: list[np.ndarray] = []
    sentence_vectors: list[np.ndarray] = []
    counted: list[WordFrequencies] = []
    for position in positions:
        segment = live.segments[position]
        version = segment.version
        rows = segment.live_rows()
        kept_ids = {version.documents.ids[r] for r in rows.tolist()}
        documents.extend(version.documents.record(r) for r in rows.tolist())
        files.extend(f for f in version.files if any(d in kept_ids for d in f.doc_ids))
        table = version.chunks
        keep = np.flatnonzero(segment.live[table.document_rows]) if len(table) else np.zeros(0, np.int64)
        stored = dense.stored_vectors(version.load_faiss())
        vectors.append(np.array(stored[keep], dtype=np.float32))
        all_sentences = st.Rows(version.load_sentence_vectors())
        offsets = table.sentence_offsets
        stored_prefixes = version.documents.prefixes
        for local in keep.tolist():
            record = table[local]
            chunks.append(replace(record, chunk_id=len(chunks)))
            sentence_vectors.append(all_sentences.rows(int(offsets[local]), int(offsets[local + 1])))
            row = int(table.document_rows[local])
            if stored_prefixes is not None:
                prefix = stored_prefixes[row]
            else:
                prefix = prefix_of(version.documents.record(row).title)
            texts.append(prefix + table.text(local))
        stored_counts = version.load_word_frequencies()
        if stored_counts is not None:
            dropped = np.flatnonzero(~segment.live[table.document_rows])
            counted.append(without(stored_counts, (table.text(local) for local in dropped.tolist())))
        else:
            counted.append(word_frequencies(table.text(local) for local in keep.tolist()))
    manifest = live.segments[positions[0]].version.manifest
    dimension = manifest.model.dimension
    data = st.VersionData(
        manifest=replace(
            manifest,
            counts=st.Counts(len(documents), len(chunks), sum(len(c.sentences) for c in chunks)),
        ),
        documents=documents,
        chunks=chunks,
        files=files,
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, dimension), np.float32),
        sentence_vectors=np.concatenate(sentence_vectors)
        if sentence_vectors
        else np.zeros((0, dimension), np.float32),
        bm25_texts=texts,
    )
    return data, summed(counted)


def merge(live: LiveStore, positions: Sequence[int], prefix_of: Callable[[str], str]) -> SegmentEntry:
    """Write the live documents of these segments as one new segment; its entry."""
    names = [live.segments[p].entry.name for p in positions]
    log.info("index.merging", extra={"segments": names})
    data, word_counts = merged_data(live, positions, prefix_of)
    entry = write_segment(live.store, data, word_counts, live.average_length())
    log.info(
        "index.merged",
        extra={
            "segments": names,
            "into": entry.name,
            "documents": entry.documents,
            "chunks": entry.chunks,
        },
    )
    return entry


# --- housekeeping ----------------------------------------------------------------------------


def referenced(store: Path, commits: Iterable[Commit]) -> tuple[set[str], set[str], set[str], set[str]]:
    """The segments, tombstone files, commits and legacy versions these commits use."""
    segments: set[str] = set()
    tombstones: set[str] = set()
    versions: set[str] = set()
    legacy: set[str] = set()
    for commit in commits:
        versions.add(commit.version)
        for entry in commit.segments:
            (legacy if commit.legacy else segments).add(entry.name)
            if entry.deletions is not None:
                tombstones.add(entry.deletions.file)
    return segments, tombstones, versions, legacy


def collect_garbage(store: Path, keep: Iterable[Commit]) -> list[str]:
    """Remove every segment, tombstone file, commit and format-2 version that no kept commit uses,
    and whatever a crashed run left half-written (the caller holds the writer's lock)."""
    segments, tombstones, versions, legacy = referenced(store, keep)
    removed: list[str] = []
    for folder, names, suffix in (
        (store / SEGMENTS, segments, ""),
        (store / TOMBSTONES, tombstones, ""),
        (store / COMMITS, versions, ".json"),
        (st.versions_dir(store), legacy, ""),
    ):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            name = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name
            if name in names and not path.name.startswith(st.TMP_PREFIX):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(f"{folder.name}/{path.name}")
    return removed


def migrate(store: Path) -> Commit | None:
    """Make a format-2 store's live version a segment of a format-3 commit (its files hard-linked, or
    copied where links cannot be made) and publish it; None when the store needs no migration."""
    version = st.current_version_id(store)
    if version is None or commit_path(store, version).exists():
        return None
    source = st.versions_dir(store) / version
    manifest = st.read_manifest(source)
    name = new_segment_name()
    tmp = store / SEGMENTS / f"{st.TMP_PREFIX}{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, copy_function=_link_or_copy)
    for path in [p for p in tmp.rglob("*") if p.is_file()]:
        st.fsync_file(path)
    os.replace(tmp, store / SEGMENTS / name)
    st.fsync_dir(store / SEGMENTS)
    counts = manifest.counts
    entry = SegmentEntry(
        name, counts.documents, counts.chunks, counts.sentences, sum_folder(store / SEGMENTS / name)
    )
    commit = new_commit(manifest, [entry])
    publish_commit(store, commit)
    log.warning(
        "store.migrated",
        extra={
            "store": str(store),
            "from": f"format 2 version {version}",
            "to": f"format {FORMAT} commit {commit.version} of one segment ({counts.chunks} chunks)",
            "why": "this ragqa writes segments: an update now writes what it changes, not the corpus",
        },
    )
    return commit


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
