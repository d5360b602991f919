"""The indexing run: find documents → reuse what is unchanged → chunk → embed → write → publish.

Sync semantics: the new version holds exactly the documents found under the given paths. Files whose
size and mtime are unchanged are not parsed again; documents whose content is unchanged keep their
chunks; chunks whose embedded text is unchanged take their vector from the cache. A run that changes
nothing publishes nothing and never loads the model.
"""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer import store as st
from indexer.chunking import Chunker, ChunkerSettings
from indexer.config import IndexSettings
from indexer.documents import Document, LoadError, Skipped, SourceFile, discover, load
from indexer.embedding import Embedder, ModelInfo, load_embedder

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Plan:
    """What the new version will hold, before any model work."""

    documents: list[st.DocumentRecord] = field(default_factory=list)
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


def run_index(paths: list[Path], settings: IndexSettings, rebuild: bool = False) -> IndexReport:
    started = time.perf_counter()
    store = settings.store
    sources, skipped = discover(paths)
    with st.writer_lock(store, settings.lock_wait):
        previous = None
        if not rebuild and st.current_version_id(store) is not None:
            previous = st.open_version(store)
            st.check_model(store, previous.manifest, settings.model)

        plan = _plan_documents(sources, previous, int(settings.max_file_mb * 1024 * 1024))
        plan.skipped[:0] = skipped
        skipped_rows = [{"path": s.path, "reason": s.reason} for s in plan.skipped]
        for s in plan.skipped:
            log.warning("index.skipped", extra={"path": s.path, "reason": s.reason})
        if not plan.documents:
            raise NothingToIndexError(
                "nothing indexable found under "
                + ", ".join(str(p) for p in paths)
                + (f" ({len(plan.skipped)} files skipped)" if plan.skipped else "")
            )

        if previous is not None and _unchanged(previous, plan, settings):
            log.info("index.unchanged", extra={"version": previous.version_id})
            return IndexReport(
                version=previous.version_id,
                documents=len(plan.documents),
                chunks=len(previous.chunks),
                embedded=0,
                reused=len(previous.chunks),
                removed=0,
                skipped=skipped_rows,
                seconds=round(time.perf_counter() - started, 3),
                published=False,
            )

        builder = _VersionBuilder(store, settings, previous)
        data = builder.build(plan)
        version_id = st.new_version_id()
        data.manifest = replace(data.manifest, version=version_id)
        st.write_version(store, version_id, data)
        st.publish(store, version_id)
        keep = {version_id} | ({previous.version_id} if previous else set())
        st.remove_old_versions(store, keep)
        kept_hashes = {c.hash for c in data.chunks} | (set(previous.chunks.hashes()) if previous else set())
        builder.cache.keep_only(settings.model, kept_hashes)
        builder.cache.close()

        removed = len(set(previous.documents) - {d.doc_id for d in plan.documents}) if previous else 0
        report = IndexReport(
            version=version_id,
            documents=len(data.documents),
            chunks=len(data.chunks),
            embedded=builder.embedded,
            reused=len(data.chunks) - builder.embedded,
            removed=removed,
            skipped=skipped_rows,
            seconds=round(time.perf_counter() - started, 3),
        )
        log.info("index.published", extra={k: v for k, v in report.as_dict().items() if k != "skipped"})
        return report


def _plan_documents(sources: list[SourceFile], previous: st.Version | None, max_bytes: int) -> _Plan:
    plan = _Plan()
    known_files = {(f.path, f.root): f for f in previous.files} if previous else {}
    seen: dict[str, str] = {}
    for source in sources:
        path, root = str(source.path.resolve()), str(source.root.resolve())
        try:
            stat = source.path.stat()
        except OSError:
            plan.skipped.append(Skipped(str(source.path), "file vanished before it could be read"))
            continue
        old = known_files.get((path, root))
        records: list[st.DocumentRecord]
        if (
            previous is not None
            and old is not None
            and (old.size, old.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
            and all(doc_id in previous.documents for doc_id in old.doc_ids)
        ):
            records = [previous.documents[doc_id] for doc_id in old.doc_ids]
        else:
            try:
                loaded = load(source, max_bytes)
            except LoadError as exc:
                plan.skipped.append(Skipped(str(source.path), str(exc)))
                continue
            except Exception as exc:  # a loader's library failing on odd input must not stop the run
                plan.skipped.append(
                    Skipped(str(source.path), f"could not be read: {type(exc).__name__}: {exc}")
                )
                continue
            plan.skipped.extend(loaded.skipped)
            records = [_record(d) for d in loaded.documents]
        kept: list[str] = []
        for record in records:
            if record.doc_id in seen:
                plan.skipped.append(
                    Skipped(
                        str(source.path),
                        f"duplicate document id {record.doc_id!r} (also in {seen[record.doc_id]})",
                    )
                )
                continue
            seen[record.doc_id] = str(source.path)
            plan.documents.append(record)
            kept.append(record.doc_id)
        plan.files.append(st.FileRecord(path, root, stat.st_size, stat.st_mtime_ns, tuple(kept)))
    return plan


def _record(document: Document) -> st.DocumentRecord:
    return st.DocumentRecord(
        doc_id=document.doc_id,
        title=document.title,
        source=document.source,
        text=document.text,
        metadata=document.metadata,
        sha256=st.document_sha256(document.title, document.source, document.text, document.metadata),
    )


def _unchanged(previous: st.Version, plan: _Plan, settings: IndexSettings) -> bool:
    manifest = previous.manifest
    if manifest.chunker != chunker_fingerprint(settings, manifest.model.max_seq_length):
        return False
    before = {doc_id: previous.documents.sha256(doc_id) for doc_id in previous.documents}
    after = {d.doc_id: d.sha256 for d in plan.documents}
    return before == after and {f.path for f in previous.files} == {f.path for f in plan.files}


class _VersionBuilder:
    """Chunks and embeds a plan, reusing the previous version's chunks and the cache's vectors."""

    def __init__(self, store: Path, settings: IndexSettings, previous: st.Version | None) -> None:
        self.settings = settings
        self.previous = previous
        self.cache = st.EmbeddingCache(store)
        self._embedder: Embedder | None = None
        self.embedded = 0

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            log.info("model.load", extra={"model": self.settings.model})
            self._embedder = load_embedder(self.settings.model, self.settings.batch_size)
        return self._embedder

    def build(self, plan: _Plan) -> st.VersionData:
        embedder = self.embedder  # the tokenizer budgets the chunks; the manifest names the model
        info = embedder.info
        fingerprint = chunker_fingerprint(self.settings, info.max_seq_length)
        chunker = Chunker(
            embedder.tokenizer,
            ChunkerSettings(
                max_tokens=fingerprint.max_tokens, overlap_sentences=fingerprint.overlap_sentences
            ),
        )
        reusable = self._reusable_chunks(fingerprint)

        chunks: list[st.ChunkRecord] = []
        texts: list[str] = []
        for document in plan.documents:
            old = reusable.get((document.doc_id, document.sha256))
            spans = (
                [(c.start, c.end, c.sentences) for c in old]
                if old is not None
                else [(c.start, c.end, c.sentences) for c in chunker.chunk(document.text, document.title)]
            )
            prefix = chunker.embed_prefix(document.title)
            for start, end, sentences in spans:
                text = prefix + document.text[start:end]
                key = st.chunk_hash(text, _relative(sentences, start - len(prefix)))
                chunks.append(st.ChunkRecord(len(chunks), document.doc_id, start, end, sentences, key))
                texts.append(text)

        vectors, sentence_vectors = self._vectors(chunks, texts, info.dimension)
        manifest = _manifest(info, fingerprint, len(plan.documents), chunks)
        return st.VersionData(manifest, plan.documents, chunks, plan.files, vectors, sentence_vectors, texts)

    def _reusable_chunks(self, fingerprint: st.ChunkerSpec) -> dict[tuple[str, str], list[st.ChunkRecord]]:
        if self.previous is None or self.previous.manifest.chunker != fingerprint:
            return {}
        by_doc: dict[tuple[str, str], list[st.ChunkRecord]] = {}
        for chunk in self.previous.chunks:
            document = self.previous.documents[chunk.doc_id]
            by_doc.setdefault((document.doc_id, document.sha256), []).append(chunk)
        return by_doc

    def _vectors(
        self, chunks: list[st.ChunkRecord], texts: list[str], dimension: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every chunk's vector and its sentences' vectors: from the cache, or embedded now."""
        model = self.settings.model
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

                self.embedder.encode_in_slabs(todo, spans, save)
        self.embedded = sum(1 for c in chunks if c.hash in missing)
        if not chunks:
            return np.zeros((0, dimension), dtype=np.float32), np.zeros((0, dimension), dtype=np.float32)
        vectors = np.stack([known[c.hash][0] for c in chunks]).astype(np.float32, copy=False)
        sentence_vectors = np.concatenate([known[c.hash][1:] for c in chunks]).astype(np.float32, copy=False)
        return vectors, sentence_vectors


def _manifest(
    info: ModelInfo, chunker: st.ChunkerSpec, documents: int, chunks: list[st.ChunkRecord]
) -> st.Manifest:
    return st.Manifest(
        format=st.FORMAT_VERSION,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model=st.ModelSpec(info.name, info.dimension, info.max_seq_length, info.normalized),
        chunker=chunker,
        embedded_text=EMBEDDED_TEXT,
        sentence_vectors=SENTENCE_VECTORS,
        sentence_vectors_dtype=st.SENTENCE_DTYPE,
        index=st.IndexSpec(
            dense="faiss.IndexFlatIP",
            bm25="bm25s, English stopwords, same texts",
            lexical_tokenizer=st.LexicalTokenizerSpec(library="bm25s", stopwords="en", lower=True),
        ),
        counts=st.Counts(documents, len(chunks), sum(len(c.sentences) for c in chunks)),
    )


def _relative(sentences: tuple[st.Span, ...], origin: int) -> list[st.Span]:
    """Sentence spans as offsets into the embedded text, whose first character is at `origin`."""
    return [(s - origin, e - origin) for s, e in sentences]
