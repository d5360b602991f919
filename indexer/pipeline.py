"""The indexing run: find documents → reuse what is unchanged → chunk → embed → write → publish.

Sync semantics: the new version holds exactly the documents found under the given paths. Files whose
size and mtime are unchanged are not parsed again; documents whose content is unchanged keep their
chunks; chunks whose embedded text is unchanged take their vector from the cache. A run that changes
nothing publishes nothing and never loads the model.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer import dense
from indexer import segments as sg
from indexer import store as st
from indexer.chunking import Chunker, ChunkerSettings
from indexer.config import IndexSettings
from indexer.documents import Document, Loaded, LoadError, Skipped, SourceFile, discover, load
from indexer.embedding import Embedder, ModelInfo, load_embedder

if TYPE_CHECKING:
    from indexer.distributed import RayWork
    from indexer.milvus_store import MilvusLocation

log = logging.getLogger("ragqa.indexer")


class NothingToIndexError(Exception):
    pass


@dataclass
class IndexReport:
    version: str
    documents: int
    chunks: int
    embedded: int
    reused: int
    removed: int
    skipped: list[dict[str, str]]
    seconds: float
    published: bool = True
    exported: bool = False  # a Milvus store: the run made the local live commit Milvus's live version

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Plan:
    """What the new commit will hold, before any model work."""

    documents: list[st.DocumentRecord] = field(default_factory=list)  # to chunk and embed: new, changed
    kept: list[str] = field(default_factory=list)  # live documents that stay where they are
    replaced: list[str] = field(default_factory=list)  # live documents whose new text is in `documents`
    files: list[st.FileRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


EMBEDDED_TEXT = "title (at most 32 tokens), a newline, then the chunk text"
SENTENCE_VECTORS = "mean of the chunk's contextual token embeddings inside each sentence"


def chunker_fingerprint(settings: IndexSettings, model_max_tokens: int) -> st.ChunkerSpec:
    return st.ChunkerSpec(
        splitter=f"syntok {importlib.metadata.version('syntok')}; blank lines and headings end sentences",
        max_tokens=min(settings.chunk_tokens, model_max_tokens),
        overlap_sentences=settings.chunk_overlap,
        embed_title=True,
    )


def run_index(
    paths: list[Path], settings: IndexSettings, rebuild: bool = False, ray_address: str | None = None
) -> IndexReport:
    """One index run (see the module docstring); with `ray_address` (an address, or
    indexer.distributed.LOCAL), loading, chunking and embedding are fanned out on Ray."""
    if ray_address is None:
        return _run_index(paths, settings, rebuild, None)
    from indexer import distributed

    with distributed.ray_session(ray_address) as ray:
        return _run_index(
            paths, settings, rebuild, distributed.RayWork(ray, settings.model, settings.batch_size)
        )


def _run_index(
    paths: list[Path], settings: IndexSettings, rebuild: bool, work: RayWork | None
) -> IndexReport:
    store = settings.local_store
    with st.writer_lock(store, settings.lock_wait):
        builder = _VersionBuilder(store, settings, work)  # opens the cache and the model when needed
        try:
            report = _index(paths, settings, rebuild, store, builder)
            location = settings.milvus
            if location is not None:
                report.exported = _export(location, store, builder)
        finally:
            builder.close()
        return report


def _index(
    paths: list[Path], settings: IndexSettings, rebuild: bool, store: Path, builder: _VersionBuilder
) -> IndexReport:
    """The run on the local store (the caller holds its writer lock)."""
    work = builder.work
    started = time.perf_counter()
    sources, skipped = discover(paths)
    live, previous = None, None
    if st.current_version_id(store) is not None:
        previous = sg.migrate(store) or sg.read_commit(store)
        if not rebuild:
            live = sg.LiveStore.open(store)
            st.check_model(store, live.manifest, settings.model)

    plan = _plan_documents(sources, live, int(settings.max_file_mb * 1024 * 1024), work)
    plan.skipped[:0] = skipped
    skipped_rows = [{"path": s.path, "reason": s.reason} for s in plan.skipped]
    for s in plan.skipped:
        log.warning("index.skipped", extra={"path": s.path, "reason": s.reason})
    if not plan.kept and not plan.documents:
        raise NothingToIndexError(
            "nothing indexable found under "
            + ", ".join(str(p) for p in paths)
            + (f" ({len(plan.skipped)} files skipped)" if plan.skipped else "")
        )
    if live is not None and live.manifest.chunker != chunker_fingerprint(
        settings, live.manifest.model.max_seq_length
    ):
        # other chunker settings: every document is chunked again, into one new segment
        plan.documents[:0] = [live.document(doc_id) for doc_id in plan.kept]
        plan.kept, live = [], None

    removed = _removed(live, plan)
    if live is not None and not plan.documents and not removed:
        log.info("index.unchanged", extra={"version": live.commit.version})
        return IndexReport(
            version=live.commit.version,
            documents=len(plan.kept),
            chunks=live.manifest.counts.chunks,
            embedded=0,
            reused=live.manifest.counts.chunks,
            removed=0,
            skipped=skipped_rows,
            seconds=round(time.perf_counter() - started, 3),
            published=False,
        )

    entries = _deleted(store, live, removed) if live is not None else []
    manifest = live.manifest if live is not None else None
    if plan.documents:
        if live is not None:  # the new segment's vectors beside the live ones: the same weights
            st.check_weights(store, live.manifest.model, builder.weights)
        data = builder.build(plan)
        average = live.average_length() if live is not None else None
        entries.append(sg.write_segment(store, data, average_length=average))
        manifest = data.manifest
    assert manifest is not None
    commit = sg.new_commit(manifest, entries)
    sg.publish_commit(store, commit)
    log.info("index.committed", extra={"version": commit.version, "segments": len(commit.segments)})
    commit = _merge(store, commit, builder)
    # the previous commit stays readable for a service still loading it
    sg.collect_garbage(store, [commit] + ([previous] if previous is not None else []))
    if removed:  # forget the vectors of chunks no segment holds any more
        live_now = sg.LiveStore.open(store)
        model = live_now.manifest.model
        builder.cache.keep_only(st.cache_key(model.name, model.weights), live_now.chunk_hashes())

    counts = commit.manifest.counts
    report = IndexReport(
        version=commit.version,
        documents=counts.documents,
        chunks=counts.chunks,
        embedded=builder.embedded,
        reused=counts.chunks - builder.embedded,
        removed=len(removed) - len(plan.replaced),
        skipped=skipped_rows,
        seconds=round(time.perf_counter() - started, 3),
    )
    log.info("index.published", extra={k: v for k, v in report.as_dict().items() if k != "skipped"})
    return report


def _export(location: MilvusLocation, store: Path, builder: _VersionBuilder) -> bool:
    """Make the local store's live commit the Milvus store's live version (of the same id): written
    whole as a new version and switched to by its alias (indexer.milvus_store.publish_version), unless
    the alias names it already. Versions that neither the alias nor the version it named before
    this one use are dropped first (a version a killed run left half-written among them). With Ray
    (and a Milvus server), the rows are written by the cluster's workers through a datasink."""
    from indexer import milvus_store as ms

    started = time.perf_counter()
    local = sg.LiveStore.open(store)
    commit = local.commit
    client = location.guarded_client()
    try:
        live = ms.live_version(location, client)
    finally:
        client.close()
    if live == commit.version:
        return False
    dropped = ms.drop_unaliased(location, keep=[live] if live else [])
    data, _ = sg.merged_data(local, range(len(commit.segments)), builder.prefix_of)
    insert = None
    if builder.work is not None and not location.is_lite:  # an embedded file is this process's alone
        insert = builder.work.milvus_insert(location)
    ms.publish_version(location, data, commit.version, insert)
    log.info(
        "index.exported",
        extra={
            "version": commit.version,
            "previous": live,
            "dropped": dropped,
            "chunks": len(data.chunks),
            "by": "ray datasink" if insert is not None else "driver",
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return True


def _removed(live: sg.LiveStore | None, plan: _Plan) -> list[str]:
    """The live documents the new commit drops: gone from the paths, or changed (their new text goes
    into the new segment)."""
    if live is None:
        return []
    wanted = set(plan.kept) | {d.doc_id for d in plan.documents}
    return [doc_id for doc_id in live.document_ids() if doc_id not in wanted] + plan.replaced


def _deleted(store: Path, live: sg.LiveStore, doc_ids: list[str]) -> list[sg.SegmentEntry]:
    """The live commit's segments with these documents deleted (a new tombstone file for each segment
    that loses some; the others as they are)."""
    rows: dict[int, list[int]] = {}
    for doc_id in doc_ids:
        at = live.find(doc_id)
        if at is not None:
            rows.setdefault(at[0], []).append(at[1])
    entries = []
    for n, segment in enumerate(live.segments):
        if n not in rows:
            entries.append(segment.entry)
            continue
        deleted = np.union1d(segment.deleted, np.asarray(rows[n], np.int64))
        chunks = len(sg.deleted_chunks(segment.version.chunks.document_rows, deleted))
        entries.append(sg.write_deletions(store, segment.entry, deleted, chunks))
    return [e for e in entries if e.live_documents > 0]


def _merge(store: Path, commit: sg.Commit, builder: _VersionBuilder) -> sg.Commit:
    """Merge segments while the policy asks for it, each merge a commit of its own: a crash in a merge
    leaves the commit before it live."""
    while positions := sg.merge_plan(commit.segments):
        live = sg.LiveStore.open(store)
        entry = sg.merge(live, positions, builder.prefix_of)
        kept = [s for n, s in enumerate(commit.segments) if n not in positions]
        kept.insert(positions[0], entry)
        commit = sg.new_commit(commit.manifest, kept)
        sg.publish_commit(store, commit)
    return commit


def _plan_documents(
    sources: list[SourceFile], live: sg.LiveStore | None, max_bytes: int, work: RayWork | None = None
) -> _Plan:
    """Which documents the new commit holds: those of unchanged files (and unchanged documents of changed
    files) stay where they are (`kept`, by id, nothing read); new and changed ones are loaded
    (`documents`), and a changed one's live copy is deleted (`replaced`)."""
    plan = _Plan()
    known_files = live.files if live is not None else {}
    seen: dict[str, str] = {}
    # each source, its resolved path and root, its stat (None: vanished), and its live file record when
    # the file is unchanged (its documents stay where they are)
    statted: list[tuple[SourceFile, str, str, os.stat_result | None, st.FileRecord | None]] = []
    for source in sources:
        path, root = str(source.path.resolve()), str(source.root.resolve())
        try:
            stat = source.path.stat()
        except OSError:
            statted.append((source, path, root, None, None))
            continue
        old = known_files.get((path, root))
        if not (
            live is not None
            and old is not None
            and (old.size, old.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
            and all(live.find(doc_id) is not None for doc_id in old.doc_ids)
        ):
            old = None  # to load
        statted.append((source, path, root, stat, old))
    to_load = [source for source, _, _, found, old in statted if found is not None and old is None]
    if work is not None:
        loaded_by_source = dict(zip(map(id, to_load), work.load(to_load, max_bytes), strict=True))

        def loader(source: SourceFile) -> Loaded:
            found = loaded_by_source[id(source)]
            if isinstance(found, Exception):
                raise found
            return found
    else:

        def loader(source: SourceFile) -> Loaded:
            return load(source, max_bytes)

    for source, path, root, file_stat, old in statted:
        if file_stat is None:
            plan.skipped.append(Skipped(str(source.path), "file vanished before it could be read"))
            continue
        kept: list[str] = []
        if old is not None:
            for doc_id in old.doc_ids:
                if _first_seen(plan, seen, doc_id, source):
                    plan.kept.append(doc_id)
            continue  # its record stays in its segment
        try:
            loaded = loader(source)
        except LoadError as exc:
            plan.skipped.append(Skipped(str(source.path), str(exc)))
            continue
        except Exception as exc:  # a loader's library failing on odd input must not stop the run
            plan.skipped.append(Skipped(str(source.path), f"could not be read: {type(exc).__name__}: {exc}"))
            continue
        plan.skipped.extend(loaded.skipped)
        for record in (_record(d) for d in loaded.documents):
            if not _first_seen(plan, seen, record.doc_id, source):
                continue
            kept.append(record.doc_id)
            live_sha = live.sha256(record.doc_id) if live is not None else None
            if live_sha == record.sha256:
                plan.kept.append(record.doc_id)
            else:
                plan.documents.append(record)
                if live_sha is not None:
                    plan.replaced.append(record.doc_id)
        plan.files.append(st.FileRecord(path, root, file_stat.st_size, file_stat.st_mtime_ns, tuple(kept)))
    return plan


def _first_seen(plan: _Plan, seen: dict[str, str], doc_id: str, source: SourceFile) -> bool:
    if doc_id in seen:
        plan.skipped.append(
            Skipped(str(source.path), f"duplicate document id {doc_id!r} (also in {seen[doc_id]})")
        )
        return False
    seen[doc_id] = str(source.path)
    return True


def _record(document: Document) -> st.DocumentRecord:
    return st.DocumentRecord(
        doc_id=document.doc_id,
        title=document.title,
        source=document.source,
        text=document.text,
        metadata=document.metadata,
        sha256=st.document_sha256(document.title, document.source, document.text, document.metadata),
    )


class _VersionBuilder:
    """Chunks and embeds a plan's new and changed documents, taking vectors from the cache where it
    has them."""

    def __init__(self, store: Path, settings: IndexSettings, work: RayWork | None = None) -> None:
        self.settings = settings
        self.work = work
        self.store = store
        self._embedder: Embedder | None = None
        self.embedded = 0

    @cached_property
    def cache(self) -> st.EmbeddingCache:
        """The store's embedding cache, opened when a step first needs it."""
        return st.EmbeddingCache(self.store)

    def close(self) -> None:
        if "cache" in self.__dict__:
            self.cache.close()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            log.info("model.load", extra={"model": self.settings.model})
            self._embedder = load_embedder(self.settings.model, self.settings.batch_size)
        return self._embedder

    @cached_property
    def weights(self) -> str:
        """The model's weights_digest: in the manifest, and in the embedding cache's keys."""
        return self.embedder.weights_digest()

    @cached_property
    def chunker(self) -> Chunker:
        """The chunker of the configured model and settings (the tokenizer budgets the chunks)."""
        fingerprint = chunker_fingerprint(self.settings, self.embedder.info.max_seq_length)
        return Chunker(
            self.embedder.tokenizer,
            ChunkerSettings(
                max_tokens=fingerprint.max_tokens, overlap_sentences=fingerprint.overlap_sentences
            ),
        )

    def prefix_of(self, title: str) -> str:
        """What is embedded, and indexed by BM25, in front of a chunk of a document with this title."""
        return self.chunker.embed_prefix(title)

    def build(self, plan: _Plan) -> st.VersionData:
        info = self.embedder.info  # the manifest names the model
        fingerprint = chunker_fingerprint(self.settings, info.max_seq_length)
        chunker = self.chunker
        chunks: list[st.ChunkRecord] = []
        texts: list[str] = []
        if self.work is not None:
            cut = self.work.chunk([(d.title, d.text) for d in plan.documents], chunker.settings)
        else:
            cut = [
                [(c.start, c.end, c.sentences) for c in chunker.chunk(d.text, d.title)]
                for d in plan.documents
            ]
        for document, spans in zip(plan.documents, cut, strict=True):
            prefix = chunker.embed_prefix(document.title)
            for start, end, sentences in spans:
                text = prefix + document.text[start:end]
                key = st.chunk_hash(text, _relative(sentences, start - len(prefix)))
                chunks.append(st.ChunkRecord(len(chunks), document.doc_id, start, end, sentences, key))
                texts.append(text)

        vectors, sentence_vectors = self._vectors(chunks, texts, info.dimension)
        manifest = _manifest(info, self.weights, fingerprint, len(plan.documents), chunks)
        return st.VersionData(manifest, plan.documents, chunks, plan.files, vectors, sentence_vectors, texts)

    def _vectors(
        self, chunks: list[st.ChunkRecord], texts: list[str], dimension: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every chunk's vector and its sentences' vectors: from the cache, or embedded now."""
        model = st.cache_key(self.settings.model, self.weights)
        known = self.cache.get_many(model, (c.hash for c in chunks), dimension)
        missing: dict[str, tuple[str, list[st.Span]]] = {}
        for chunk, text in zip(chunks, texts, strict=True):
            cached = known.get(chunk.hash)
            if cached is None or len(cached) != 1 + len(chunk.sentences):
                prefix_length = len(text) - (chunk.end - chunk.start)
                missing.setdefault(
                    chunk.hash, (text, _relative(chunk.sentences, chunk.start - prefix_length))
                )
        log.info("index.embed", extra={"chunks": len(chunks), "to_embed": len(missing)})
        if missing:
            from tqdm import tqdm

            keys = list(missing)
            todo = [missing[key][0] for key in keys]
            spans = [missing[key][1] for key in keys]
            with tqdm(
                total=len(todo),
                unit="chunk",
                desc="embedding",
                disable=not sys.stderr.isatty(),
                file=sys.stderr,
            ) as bar:

                def save(indices: list[int], results: list[np.ndarray]) -> None:
                    fresh = [(keys[i], results[n]) for n, i in enumerate(indices)]
                    self.cache.put_many(model, fresh)
                    known.update(fresh)
                    bar.update(len(indices))

                if self.work is not None:
                    self.work.embed(todo, spans, save)
                else:
                    self.embedder.encode_in_slabs(todo, spans, save)
        self.embedded = sum(1 for c in chunks if c.hash in missing)
        if not chunks:
            return np.zeros((0, dimension), dtype=np.float32), np.zeros((0, dimension), dtype=np.float32)
        vectors = np.stack([known[c.hash][0] for c in chunks]).astype(np.float32, copy=False)
        sentence_vectors = np.concatenate([known[c.hash][1:] for c in chunks]).astype(np.float32, copy=False)
        return vectors, sentence_vectors


def _manifest(
    info: ModelInfo, weights: str, chunker: st.ChunkerSpec, documents: int, chunks: list[st.ChunkRecord]
) -> st.Manifest:
    return st.Manifest(
        format=st.FORMAT_VERSION,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model=st.ModelSpec(
            info.name, info.dimension, info.max_seq_length, info.normalized, st.PASSAGE_ENCODER, weights
        ),
        chunker=chunker,
        embedded_text=EMBEDDED_TEXT,
        sentence_vectors=SENTENCE_VECTORS,
        sentence_vectors_dtype=st.SENTENCE_DTYPE,
        index=st.IndexSpec(
            dense=f"faiss: exact (IndexFlatIP) under {dense.EXACT_BELOW} chunks a segment, else approximate",
            bm25="bm25s, English stopwords, same texts",
            lexical_tokenizer=st.LexicalTokenizerSpec(library="bm25s", stopwords="en", lower=True),
        ),
        counts=st.Counts(documents, len(chunks), sum(len(c.sentences) for c in chunks)),
    )


def _relative(sentences: tuple[st.Span, ...], origin: int) -> list[st.Span]:
    """Sentence spans as offsets into the embedded text, whose first character is at `origin`."""
    return [(s - origin, e - origin) for s, e in sentences]
