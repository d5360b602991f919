"""Scale: what the store and the service cost at N chunks, to be measured at N and 10N (issue 11).

    python -m bench.scale --chunks N [--store DIR] [--questions Q] [--seed S] [--results DIR]

1. **A synthetic store of N one-chunk documents**, written as indexer/pipeline.py writes one now
   (store format 3, indexer.segments): ONE segment (`sg.write_segment` of a `VersionData` with a
   `Manifest`; its dense index chosen by size by indexer.dense: exact `IndexFlatIP` below
   `dense.EXACT_BELOW` chunks, HNSW above; BM25 by indexer.lexical), a commit of it (`sg.new_commit`,
   `sg.publish_commit`), under `writer_lock`. Each document is five sentences drawn (seeded) from the
   sentences of ../shared/data/corpus/wiki-leads-10k.jsonl (split with
   indexer.chunking.split_sentences), so that BM25 and answering work on real text; its title is the
   title of its first sentence's article; its one chunk is its whole text, with the exact offsets of the
   chunk and of its five sentences.
   **The vectors are real sentence embeddings, combined**: every sentence of the pool is encoded once by
   the model (its batch `encode`, POOL_BATCH a batch; a few minutes on two cores, cached in
   var/scale/pool-vectors-<corpus sha[:12]>-<model>.npy and reused). A document's sentence vectors are
   its five sentences' own vectors (each encoded alone, where ragqa-index reads them in the passage's
   context), its chunk vector the L2-normalised mean of those five: not the model's encoding of the
   concatenated text (embedding N chunks would take hours on two cores), but vectors that lie where text
   embeddings lie, which random 384-d vectors (the worst case for approximate search) do not. So
   `recall_at_10_vs_exact` measures the service's dense index against exact search over the very same
   vectors, never the model's quality. The synthetic store has no embedding cache (a store built by
   ragqa-index also holds every chunk's vectors in cache/embeddings.sqlite).
   The store stays in --store (default var/scale/N) with a marker file (bench-scale.json) naming N, the
   seed, the corpus, the model, the recipe (GENERATOR) and the built commit; a later run with the same
   ones reuses it, and says so, instead of building it again (`build_s` is then the figure of the run
   that built it). A folder that is not such a store is never overwritten.
2. **The real service over it** (service.processes.running_service): `ready_s` from its start to
   /readyz 200, `rss_mb` its resident memory after a warm-up of 20 questions.
3. **Questions**: real text, encoded by the real model in the server: Q sentences of the same corpus
   held out of the store (2,500 sentences are held out for every N and seed, so the store does not
   depend on Q), asked one at a time over HTTP, each once (the service caches question vectors):
   Q to /v1/search {"top_k": 50} (`search_p50_ms`, `search_p95_ms`) and Q others to /v1/ask
   (`ask_p50_ms`). Each phase records the stage means of /metrics and the CPU that other processes
   took meanwhile (another process on the machine disturbs the figures).
4. **`recall_at_10_vs_exact`**: for each search question, the passages whose `dense_rank` ≤ 10 (the
   service's dense top-10) against the exact top-10 computed here with numpy over the built commit's
   chunk vectors (each segment's, read from its dense index with `dense.stored_vectors`; chunk id =
   position in commit order) and the question's vector (encoded in this process by the same model,
   `load_embedder(...).encode_short`, one question at a time as the server does). The service returns
   the best top_k of the fused dense and BM25 lists (each `max(RAGQA_CANDIDATES, top_k)` = 50 deep for
   top_k 50), so its default fusion does not promise the whole dense top-10 in a top_k 50 answer (the
   run records how many answers held it). So recall is read from a second start of the service, after
   the measured one, whose fusion keeps the dense order (RAGQA_SENTENCE_WEIGHT=0, RAGQA_BM25_WEIGHT=0:
   the fused score is the chunk's cosine, its top 50 the dense top 50); every answer is checked to hold
   dense ranks 1..10 and the run fails loudly when one does not. A segment below `dense.EXACT_BELOW`
   chunks is searched exactly (recall 1.0); a larger one by HNSW (`dense_index` says which).
5. **One document updated** as an incremental index run commits it now: under the writer's lock, the
   live commit opened (`sg.LiveStore`), the document found; ONE new segment holding only the new
   document (new text: five other held-out sentences; their real vectors, the chunk's their normalised
   mean) written with `sg.write_segment`, a tombstone for the old row (`sg.write_deletions`), a commit
   of the live segments plus the new one (`sg.new_commit`, `sg.publish_commit`): what is written
   (`written_mb`: the segment, the tombstone and the commit) does not grow with N.
   `update_one_doc_s` runs from the start of the update to the moment the running service serves it
   (/readyz reports the new index_version, polled every 0.1 s), `reload_s` from `publish` to served (it
   includes up to RAGQA_RELOAD_INTERVAL, 1 s, of the service's polling), `rss_during_reload_mb` is the
   server's peak RSS sampled every 50 ms over the update. The updated document is then read back over
   HTTP to check it is the one served.
6. When the measured service has stopped, CURRENT is put back to the built commit (the update's commit,
   segment and tombstone removed by `sg.collect_garbage` on the way out), for the recall service and so
   that a rerun reuses the same store. Last, where a start's time and memory go (`load_profile`), timed
   in this process with the RSS each step adds: the steps of `indexer.reader.Segment.open` one by one
   (checksums, records, dense index, BM25, sentence vectors, checks), then what a start does
   (`LocalStoreReader.open` reusing nothing, `service.index.LoadedIndex`: `total`), then the hot reload
   to the update's commit (`LocalStoreReader.open(..., previous=reader)`: only the new segment opened).

Memory figures (`*_mb`) are MiB (2**20 bytes), disk figures too. One JSON line with every figure is the
last line of stdout; the results (one row per N: a run at one N keeps the other rows made by the same
recipe, GENERATOR, and drops the others') go to bench/results/scale.{json,md} (or --results DIR), the
Markdown table to stderr.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from bench.harness import (
    REPO,
    CpuMeter,
    Sentence,
    add_corpus_option,
    add_results_option,
    code_state,
    command_line,
    corpus_sha256,
    distinct_picks,
    document_vectors,
    load_average,
    log,
    machine,
    machine_summary,
    malloc,
    memory_mib,
    normalised,
    now,
    offline,
    percentiles,
    pool_vectors,
    publish,
    require_data,
    scrape,
    sentence_pool,
    shared_data,
    stage_means_ms,
)
from indexer import dense
from indexer import segments as sg
from indexer import store as st
from indexer.chunking import Chunker, ChunkerSettings
from indexer.config import IndexSettings
from indexer.embedding import Embedder, load_embedder
from indexer.pipeline import EMBEDDED_TEXT
from service.processes import RunningProcess, running_service

DEFAULT_CORPUS = shared_data("corpus/wiki-leads-10k.jsonl")
SCALE_DIR = REPO / "var" / "scale"
MARKER = "bench-scale.json"  # in the store's folder: what built it
GENERATOR = 2  # the synthetic data's recipe: a store built by another recipe is built again
# (1: random vectors, a format-2 version; 2: the pool's real sentence vectors, one segment of a commit)
SENTENCES_PER_DOC = 5
HELD_OUT = 2500  # sentences never in a store: warm-up, questions, the update's new text
WARMUP = 20
SEARCH_TOP_K = 50
RECALL_K = 10
EXACT_QUESTIONS = 32  # questions scored at a time by the exact search (a chunks × 32 float32 block)
LOCK_WAIT = 30.0
READY_TIMEOUT = 1800.0  # seconds for the server to load the model and the store
SERVED_TIMEOUT = 1800.0  # seconds for the server to serve an update
REQUEST_TIMEOUT = 120.0
RSS_EVERY = 0.05  # seconds between samples of the server's RSS during the update
SERVED_POLL = 0.1  # seconds between /readyz polls while waiting for the update to be served
AFTER_RELOAD = 3.0  # seconds after the update is served at which the server's RSS is read again
# The recall service's fusion: the fused score is the chunk's cosine alone, so its top 50 is the dense top
# 50 and every dense rank <= 10 is in a top_k 50 answer (the default fusion adds the best sentence's cosine
# and BM25, which can reorder the dense hits enough to push some of the dense top-10 out of the 50
# returned).
RECALL_ENV = {"RAGQA_FUSION": "score", "RAGQA_SENTENCE_WEIGHT": "0", "RAGQA_BM25_WEIGHT": "0"}
DISTURBED_CORES = 0.25  # other processes' CPU use above which a phase's figures are not to be trusted
VECTORS_NOTE = (
    "real model vectors of corpus sentences: every sentence of the pool encoded once by the model (batched,"
    " cached in var/scale), a document's sentence vectors its five sentences' own vectors (each encoded"
    " alone, not in the document's context), its chunk vector the L2-normalised mean of those five (not the"
    " model's encoding of the concatenated text, but where text embeddings lie); recall figures measure the"
    " dense index against exact search over the same vectors, not the model"
)
HEADLINE = (
    "chunks",
    "build_s",
    "disk_mb",
    "ready_s",
    "rss_mb",
    "search_p50_ms",
    "search_p95_ms",
    "ask_p50_ms",
    "recall_at_10_vs_exact",
    "update_one_doc_s",
    "reload_s",
    "rss_during_reload_mb",
)

Span = tuple[int, int]


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)


# --- text: the corpus's sentences --------------------------------------------------------------


@dataclass(frozen=True)
class Texts:
    """The pool split once per seed: the documents' sentences, and the held-out ones, which no store of
    this seed holds (warm-up, questions, the update's new text)."""

    documents: list[Sentence]
    warmup: list[str]
    update: list[Sentence]
    questions: list[str]  # the first Q for /v1/search, the next Q for /v1/ask


def split_pool(pool: list[Sentence], seed: int) -> Texts:
    if len(pool) < HELD_OUT + 1000:
        raise SystemExit(
            f"the corpus has {len(pool)} usable sentences; the benchmark needs {HELD_OUT + 1000}"
        )
    order = np.random.default_rng([seed, 0]).permutation(len(pool))
    held = [pool[i] for i in order[:HELD_OUT]]
    return Texts(
        documents=[pool[i] for i in order[HELD_OUT:]],
        warmup=[s.text for s in held[:WARMUP]],
        update=held[WARMUP : WARMUP + SENTENCES_PER_DOC],
        questions=[s.text for s in held[WARMUP + SENTENCES_PER_DOC :]],
    )


def max_questions() -> int:
    return (HELD_OUT - WARMUP - SENTENCES_PER_DOC) // 2


def compose(sentences: Sequence[str]) -> tuple[str, tuple[Span, ...]]:
    """The sentences joined by a space, and each one's exact [start, end) in the text."""
    spans: list[Span] = []
    at = 0
    for sentence in sentences:
        spans.append((at, at + len(sentence)))
        at += len(sentence) + 1
    text = " ".join(sentences)
    assert all(text[s:e] == sentence for (s, e), sentence in zip(spans, sentences, strict=True))
    return text, tuple(spans)


# --- the synthetic store --------------------------------------------------------------------------


class Prefixes:
    """The title as it is embedded (and indexed by BM25) in front of a chunk, per distinct title."""

    def __init__(self, chunker: Chunker) -> None:
        self.chunker = chunker
        self.known: dict[str, str] = {}

    def __call__(self, title: str) -> str:
        prefix = self.known.get(title)
        if prefix is None:
            prefix = self.known[title] = self.chunker.embed_prefix(title)
        return prefix


def synthetic_root(seed: int) -> Path:
    """Where the documents' files would be (they do not exist: the FileRecords are synthetic)."""
    return Path("/synthetic") / f"bench-scale-seed{seed}"


def doc_id_of(i: int) -> str:
    return f"scale-{i:07d}"


def document_and_chunk(
    i: int, sentences: Sequence[Sentence], title: str, chunk_id: int, prefixes: Prefixes, seed: int
) -> tuple[st.DocumentRecord, st.ChunkRecord, st.FileRecord, str]:
    """Document i of these sentences, its one chunk (the whole text), its file record and the text
    BM25 indexes (and the model would embed): the title prefix and the chunk."""
    text, spans = compose([s.text for s in sentences])
    doc_id = doc_id_of(i)
    source = f"synthetic/{doc_id}.txt"
    document = st.DocumentRecord(doc_id, title, source, text, {}, st.document_sha256(title, source, text, {}))
    prefix = prefixes(title)
    embedded = prefix + text
    relative = [(s + len(prefix), e + len(prefix)) for s, e in spans]  # as pipeline._relative, start 0
    chunk = st.ChunkRecord(chunk_id, doc_id, 0, len(text), spans, st.chunk_hash(embedded, relative))
    root = synthetic_root(seed)
    file = st.FileRecord(
        str(root / f"{doc_id}.txt"), str(root), len(text.encode("utf-8")), time.time_ns(), (doc_id,)
    )
    return document, chunk, file, embedded


def manifest_for(embedder: Embedder, chunker: Chunker, documents: int, sentences: int) -> st.Manifest:
    """The manifest indexer.pipeline writes, saying what is synthetic."""
    info = embedder.info
    return st.Manifest(
        format=st.FORMAT_VERSION,
        created=now(),
        model=st.ModelSpec(info.name, info.dimension, info.max_seq_length, info.normalized),
        chunker=st.ChunkerSpec(
            splitter="bench.scale synthetic: one chunk per document of five corpus sentences (syntok)",
            max_tokens=chunker.settings.max_tokens,
            overlap_sentences=0,
            embed_title=True,
        ),
        embedded_text=f"bench.scale: not embedded as such ({VECTORS_NOTE}); would be: {EMBEDDED_TEXT}",
        sentence_vectors=f"bench.scale: {VECTORS_NOTE}",
        index=st.IndexSpec(
            dense=f"faiss: exact (IndexFlatIP) in segments below {dense.EXACT_BELOW} chunks, else HNSW",
            bm25="bm25s, English stopwords, same texts",
            lexical_tokenizer=st.LexicalTokenizerSpec(library="bm25s", stopwords="en", lower=True),
        ),
        counts=st.Counts(documents, documents, sentences),
    )


def synthetic_version(
    n: int, texts: Texts, embedder: Embedder, prefixes: Prefixes, seed: int, pool_vectors: np.ndarray
) -> st.VersionData:
    """N one-chunk documents of five distinct sentences each (seeded): each sentence's vector its real
    one from the pool's, the chunk's the normalised mean of its five (`document_vectors`)."""
    pool = texts.documents
    picks = distinct_picks(np.random.default_rng([seed, 1]), n, len(pool), SENTENCES_PER_DOC)
    documents, chunks, files, bm25_texts = [], [], [], []
    for i in range(n):
        sentences = [pool[j] for j in picks[i]]
        document, chunk, file, embedded = document_and_chunk(
            i, sentences, sentences[0].title, i, prefixes, seed
        )
        documents.append(document)
        chunks.append(chunk)
        files.append(file)
        bm25_texts.append(embedded)
    manifest = manifest_for(embedder, prefixes.chunker, n, n * SENTENCES_PER_DOC)
    rows = np.array([s.index for s in pool], dtype=np.int64)[picks]  # (n, 5) rows of the pool's vectors
    vectors = document_vectors(pool_vectors, rows)
    # in the dtype the store keeps them in (float16), so that writing them makes no copy of n × 5 rows
    sentence_vectors = pool_vectors.astype(manifest.sentence_vectors_dtype)[rows.reshape(-1)]
    return st.VersionData(manifest, documents, chunks, files, vectors, sentence_vectors, bm25_texts)


def read_marker(store: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((store / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_marker(store: Path, value: dict[str, Any]) -> None:
    tmp = store / (MARKER + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, store / MARKER)


def reusable_version(store: Path, identity: dict[str, Any]) -> str | None:
    """The built commit of a complete bench.scale store with this identity (N, seed, corpus, recipe),
    if its commit and its segments' folders are there."""
    marker = read_marker(store)
    if marker is None or not marker.get("complete") or any(marker.get(k) != v for k, v in identity.items()):
        return None
    version_id = str(marker.get("version"))
    if not sg.commit_path(store, version_id).is_file():
        return None
    try:
        commit = sg.read_commit(store, version_id)
    except st.StoreError:
        return None
    if commit.legacy or not all(commit.folder(store, entry).is_dir() for entry in commit.segments):
        return None
    return version_id if commit.manifest.counts.chunks == identity["chunks"] else None


def restore(store: Path, version_id: str, also_keep: Sequence[str] = ()) -> list[str]:
    """Make the built commit live again and remove every segment, tombstone and commit it does not use
    (the update's), but those of the commits `also_keep`; what was removed."""
    with st.writer_lock(store, LOCK_WAIT):
        built = sg.read_commit(store, version_id)
        if st.current_version_id(store) != version_id:
            sg.publish_commit(store, built)
        kept = [built] + [sg.read_commit(store, v) for v in also_keep if sg.commit_path(store, v).is_file()]
        return sg.collect_garbage(store, kept)


def ensure_store(
    store: Path,
    identity: dict[str, Any],
    texts: Texts,
    embedder: Embedder,
    prefixes: Prefixes,
    vectors: Callable[[], np.ndarray],
) -> tuple[str, dict[str, Any], bool]:
    """The store's built commit, its build figures and whether it was reused rather than built now.
    `vectors()`: the pool's sentence vectors, asked for only when the store is built."""
    version_id = reusable_version(store, identity)
    if version_id is not None:
        marker = read_marker(store) or {}
        removed = restore(store, version_id)
        log(
            f"reusing the store {store} (built {marker.get('built')}, {identity['chunks']:,} chunks, seed"
            f" {identity['seed']}): not rebuilding it"
            + (f"; removed what a previous run left: {', '.join(removed)}" if removed else "")
        )
        return version_id, dict(marker.get("build") or {}), True

    if read_marker(store) is not None:
        log(f"{store} holds another bench.scale store: removing it to build this one")
        shutil.rmtree(store)
    elif store.exists() and any(store.iterdir()):
        raise SystemExit(
            f"{store} exists and is not a bench.scale store (no {MARKER}): not touching it;"
            " pass another --store"
        )
    store.mkdir(parents=True, exist_ok=True)
    write_marker(store, {**identity, "complete": False})
    n = identity["chunks"]
    pool_vectors = vectors()
    log(f"building a synthetic store of {n:,} one-chunk documents (one segment) in {store} ...")
    started = time.perf_counter()
    with st.writer_lock(store, LOCK_WAIT):
        data = synthetic_version(n, texts, embedder, prefixes, identity["seed"], pool_vectors)
        generated = time.perf_counter()
        entry = sg.write_segment(store, data)
        written = time.perf_counter()
        commit = sg.new_commit(data.manifest, [entry])
        sg.publish_commit(store, commit)
        published = time.perf_counter()
    build = {
        "build_s": round(published - started, 2),
        "generate_s": round(generated - started, 2),
        "write_segment_s": round(written - generated, 2),
        "publish_s": round(published - written, 3),
        "segment": entry.name,
        "bench_rss_peak_mb": memory_mib(os.getpid())["peak"],
    }
    del data
    gc.collect()
    version_id = commit.version
    write_marker(store, {**identity, "complete": True, "version": version_id, "built": now(), "build": build})
    log(f"built in {build['build_s']} s (write_segment {build['write_segment_s']} s), commit {version_id}")
    return version_id, build, False


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_usage(store: Path, version_id: str) -> dict[str, Any]:
    """The store's size (every file's size, summed), its built commit's segments' and, file by file
    (each name summed over the segments), what those hold."""
    commit = sg.read_commit(store, version_id)
    folders = [commit.folder(store, entry) for entry in commit.segments]
    files: dict[str, int] = {}
    for folder in folders:
        for path in sorted(folder.iterdir()):
            files[path.name] = files.get(path.name, 0) + tree_bytes(path)
    return {
        "store_mb": mib(tree_bytes(store)),
        "segments_mb": mib(sum(tree_bytes(folder) for folder in folders)),
        "segment_files_mb": {name: mib(size) for name, size in sorted(files.items())},
        "commit_kb": round(sg.commit_path(store, version_id).stat().st_size / 1024, 1),
    }


# --- exact search, in this process -----------------------------------------------------------------


def question_vectors(embedder: Embedder, questions: list[str]) -> np.ndarray:
    """Each question's vector, one at a time as the server encodes a lone question."""
    return np.concatenate([embedder.encode_short([q]) for q in questions]).astype(np.float32)


def exact_top(store: Path, version_id: str, vectors: np.ndarray, k: int) -> list[list[int]]:
    """The exact top-k chunk ids by inner product of each question vector, over the commit's own chunk
    vectors: each segment's, read from its dense index (`dense.stored_vectors`: a view of the index's
    flat storage, no copy), global chunk id = the segment's first id + its row, in commit order; the
    commit's deleted chunks left out. Segment by segment, so nothing is concatenated."""
    commit = sg.read_commit(store, version_id)
    candidates: list[list[tuple[float, int]]] = [[] for _ in range(len(vectors))]
    base = 0
    for entry in commit.segments:
        version = st.open_folder(store, commit.folder(store, entry), entry.name)
        chunks = dense.stored_vectors(version.load_faiss())
        deleted = sg.deleted_chunks(version.chunks.document_rows, sg.read_deletions(store, commit, entry))
        kk = min(k, len(chunks))
        for at in range(0, len(vectors) if kk else 0, EXACT_QUESTIONS):
            scores = chunks @ vectors[at : at + EXACT_QUESTIONS].T  # (chunks, questions)
            if len(deleted):
                scores[deleted] = -np.inf
            for q, column in enumerate(scores.T, start=at):
                best = np.argpartition(-column, kk - 1)[:kk]
                candidates[q].extend((float(column[c]), base + int(c)) for c in best if column[c] > -np.inf)
            del scores
        base += entry.chunks
        del chunks, version
    return [[chunk for _, chunk in sorted(found, key=lambda pair: -pair[0])[:k]] for found in candidates]


# --- the service ----------------------------------------------------------------------------------


@dataclass
class Phase:
    route: str
    latency_ms: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    cpu: dict[str, float | None] = field(default_factory=dict)
    stage_means_ms: dict[str, float | None] = field(default_factory=dict)
    load_1min: tuple[float | None, float | None] = (None, None)

    def summary(self) -> dict[str, Any]:
        stages = {
            stage: percentiles([t[stage] for t in self.timings if stage in t])
            for stage in ("encode", "retrieve", "answer")
        }
        return {
            "route": self.route,
            "latency_ms": percentiles(self.latency_ms),
            "server_timings_ms": stages if self.timings else None,
            "server_metrics_mean_ms": self.stage_means_ms,
            **self.cpu,
            "load_average_1min": {"before": self.load_1min[0], "after": self.load_1min[1]},
        }


def one_at_a_time(
    server: RunningProcess,
    client: httpx.Client,
    route: str,
    questions: list[str],
    body: Callable[[str], dict[str, Any]],
    check: Callable[[int, dict[str, Any]], None],
) -> Phase:
    """Each question once, one at a time, timed on the client; `check(i, json)` sees every answer."""
    log(f"{len(questions)} × POST {route}, one at a time ...")
    phase = Phase(route)
    before = scrape(server.url)
    load_before = load_average()
    meter = CpuMeter(server.pid).start()
    for i, question in enumerate(questions):
        began = time.perf_counter()
        response = client.post(route, json=body(question))
        elapsed = (time.perf_counter() - began) * 1000
        if response.status_code != 200:
            raise SystemExit(f"POST {route} answered {response.status_code}: {response.text[:300]}")
        phase.latency_ms.append(elapsed)
        answer = response.json()
        if "timings_ms" in answer:
            phase.timings.append({k: float(v) for k, v in answer["timings_ms"].items()})
        check(i, answer)
    phase.cpu = meter.stop()
    phase.load_1min = (load_before, load_average())
    phase.stage_means_ms = stage_means_ms(before, scrape(server.url), route)
    return phase


def _dense_hits(answer: dict[str, Any], k: int) -> list[tuple[int, int]]:
    return sorted(
        (p["dense_rank"], p["chunk_id"])
        for p in answer["results"]
        if p.get("dense_rank") is not None and p["dense_rank"] <= k
    )


def dense_ranks(answer: dict[str, Any], k: int) -> list[int]:
    """The dense ranks ≤ k among a /v1/search answer's passages."""
    return [rank for rank, _ in _dense_hits(answer, k)]


def dense_top(answer: dict[str, Any], k: int, question: str) -> list[int]:
    """The service's dense top-k from a /v1/search answer: the passages of dense rank ≤ k, which must
    be ranks 1..k exactly: fail loudly when one is missing."""
    hits = _dense_hits(answer, k)
    if [rank for rank, _ in hits] != list(range(1, k + 1)):
        raise SystemExit(
            f"/v1/search top_k {SEARCH_TOP_K} did not return the whole dense top-{k} for {question!r}: dense"
            f" ranks ≤ {k} returned: {[rank for rank, _ in hits]}. The service returns the best top_k of"
            " the fused dense and BM25 lists (each max(RAGQA_CANDIDATES, top_k) deep), so a dense hit can"
            f" be fused out of the answer, even with {RECALL_ENV}; recall@10 cannot be read from it."
        )
    return [chunk for _, chunk in hits]


class RssSampler:
    """A process's RSS every RSS_EVERY seconds on a thread of its own, between `start` and `stop`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []  # (perf_counter, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def _sample(self) -> None:
        rss = memory_mib(self.pid)["rss"]
        if rss is not None:
            self.samples.append((time.perf_counter(), rss))

    def _run(self) -> None:
        while not self._stop.wait(RSS_EVERY):
            self._sample()

    def peak(self) -> tuple[float, float]:
        """(when, MiB) of the highest sample."""
        return max(self.samples, key=lambda sample: sample[1])


@dataclass
class Update:
    doc_id: str
    text: str
    version_id: str
    began: float
    published: float
    steps_s: dict[str, float]
    written_mb: float
    written: dict[str, Any]


def update_one_document(
    store: Path,
    doc_index: int,
    sentences: list[Sentence],
    sentence_vectors: np.ndarray,
    prefixes: Prefixes,
    seed: int,
) -> Update:
    """One document changed (new text, its sentences' real vectors) and committed the way an incremental
    index run commits it (indexer.pipeline): under the writer's lock, the live commit opened
    (`sg.LiveStore`), the document found; ONE new segment holding only the new document written
    (`sg.write_segment`), a tombstone for its old row in its segment (`sg.write_deletions`: the rows
    that segment had deleted already, and this one), a commit of the live segments (that one with its new
    deletions) and the new one appended (`sg.new_commit`, `sg.publish_commit`). Nothing else is written:
    no other segment is read beyond its records, nothing is embedded (ragqa-index would embed the one new
    chunk; here its vectors are the pool's). Then, as the indexer does after publishing, the garbage
    collected (keeping the previous commit, which a service may still be loading)."""
    began = time.perf_counter()
    with st.writer_lock(store, LOCK_WAIT):
        live = sg.LiveStore.open(store)
        doc_id = doc_id_of(doc_index)
        found = live.find(doc_id)
        if found is None:
            raise SystemExit(f"{doc_id} is not in the live commit {live.commit.version} of {store}")
        position, row = found
        segment = live.segments[position]
        old = segment.version.documents.record(row)
        chunk_rows = np.flatnonzero(segment.version.chunks.document_rows == row)
        if len(chunk_rows) != 1 or len(segment.version.chunks[int(chunk_rows[0])].sentences) != len(
            sentences
        ):
            raise SystemExit(f"{doc_id} is not a one-chunk document of {len(sentences)} sentences")
        read = time.perf_counter()

        document, chunk, file, embedded = document_and_chunk(
            doc_index, sentences, old.title, 0, prefixes, seed
        )
        own = np.ascontiguousarray(sentence_vectors, dtype=np.float32)
        vector = normalised(own.mean(axis=0, keepdims=True, dtype=np.float32))
        base = segment.version.manifest  # a segment's manifest (store format 2, as write_segment writes it)
        manifest = replace(base, created=now(), counts=st.Counts(1, 1, len(sentences)), version="")
        data = st.VersionData(manifest, [document], [chunk], [file], vector, own, [embedded])
        deleted_rows = np.union1d(segment.deleted, np.array([row], dtype=np.int64)).astype(np.int64)
        deleted_chunks = len(sg.deleted_chunks(segment.version.chunks.document_rows, deleted_rows))
        prepared = time.perf_counter()

        entry = sg.write_segment(store, data)
        segment_written = time.perf_counter()
        tombstoned = sg.write_deletions(store, segment.entry, deleted_rows, deleted_chunks)
        deletions_written = time.perf_counter()
        entries = [tombstoned if n == position else s.entry for n, s in enumerate(live.segments)]
        entries = [e for e in entries if e.live_documents > 0] + [entry]
        commit = sg.new_commit(replace(live.manifest, created=now()), entries)
        sg.publish_commit(store, commit)
        published = time.perf_counter()
        removed = sg.collect_garbage(store, [commit, live.commit])
        collected = time.perf_counter()
    assert tombstoned.deletions is not None
    written = (
        tree_bytes(commit.folder(store, entry))
        + tree_bytes(store / sg.TOMBSTONES / tombstoned.deletions.file)
        + tree_bytes(sg.commit_path(store, commit.version))
    )
    return Update(
        doc_id=document.doc_id,
        text=document.text,
        version_id=commit.version,
        began=began,
        published=published,
        steps_s={
            "read_live_store_s": round(read - began, 3),
            "prepare_s": round(prepared - read, 3),
            "write_segment_s": round(segment_written - prepared, 3),
            "write_deletions_s": round(deletions_written - segment_written, 3),
            "commit_and_publish_s": round(published - deletions_written, 3),
            "collect_garbage_after_publish_s": round(collected - published, 3),
        },
        written_mb=round(written / 2**20, 3),
        written={
            "segment_kb": round(tree_bytes(commit.folder(store, entry)) / 1024, 1),
            "tombstone_bytes": tree_bytes(store / sg.TOMBSTONES / tombstoned.deletions.file),
            "commit_bytes": tree_bytes(sg.commit_path(store, commit.version)),
            "segments_in_commit": len(commit.segments),
            "garbage_removed": removed,
        },
    )


def wait_served(server: RunningProcess, client: httpx.Client, version_id: str) -> float:
    """perf_counter when /readyz first reports `version_id`."""
    deadline = time.monotonic() + SERVED_TIMEOUT
    while True:
        if server.process.poll() is not None:
            raise SystemExit(f"the server exited during the reload:\n{server.log_tail()}")
        try:
            response = client.get("/readyz", timeout=10)
            if response.status_code == 200 and response.json().get("index_version") == version_id:
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not serve {version_id} within {SERVED_TIMEOUT:.0f} s")
        time.sleep(SERVED_POLL)


# --- the run ----------------------------------------------------------------------------------------


@contextmanager
def restored(store: Path, version_id: str) -> Iterator[None]:
    """On the way out, however the run ends: the store back at its built commit, nothing else in it."""
    try:
        yield
    finally:
        was_live = st.current_version_id(store)
        removed = restore(store, version_id)
        if was_live != version_id or removed:
            log(
                f"restored {store} to its built commit {version_id}"
                f" (removed {', '.join(removed) or 'nothing'})"
            )


def load_profile(store: Path, version_id: str, model_name: str, updated: str | None) -> dict[str, Any]:
    """Where opening the built commit as the service does goes, in this process: seconds and the RSS
    each step adds (MiB; the allocator may keep or return memory, so the figures are rough). First the
    steps of `indexer.reader.Segment.open` one by one, for each segment of the commit (then released);
    then what a start does, `LocalStoreReader.open` reusing nothing and `LoadedIndex` (`total`); then,
    when the update's commit `updated` is still on disk, the hot reload to it
    (`LocalStoreReader.open(..., previous=reader)`: only its new segment opened)."""
    from indexer.reader import LocalStoreReader, Segment
    from service.index import LoadedIndex

    gc.collect()
    steps: dict[str, dict[str, float]] = {}
    last = [time.perf_counter(), memory_mib(os.getpid())["rss"] or 0.0]

    def step(name: str) -> dict[str, float]:
        rss = memory_mib(os.getpid())["rss"] or 0.0
        moment = time.perf_counter()
        figures = steps.setdefault(name, {"s": 0.0, "rss_added_mb": 0.0})  # summed over segments
        figures["s"] = round(figures["s"] + moment - last[0], 2)
        figures["rss_added_mb"] = round(figures["rss_added_mb"] + rss - last[1], 1)
        last[:] = [moment, rss]
        return figures

    commit = sg.read_commit(store, version_id)
    log(f"load profile: opening the built commit ({len(commit.segments)} segment(s)) as the service does ...")
    for entry in commit.segments:
        folder = commit.folder(store, entry)
        sg.verify_folder(folder, entry.files, f"segment {entry.name} of {store}")
        step("Segment.open: verify every file's size and CRC-32 (sg.verify_folder)")
        version = st.open_folder(store, folder, entry.name)
        step("Segment.open: open_folder (manifest and records as columns; texts read on demand)")
        faiss_index = version.load_faiss()
        step(f"Segment.open: load_faiss ({version.manifest.index.dense})")
        lexical = version.load_bm25()
        step("Segment.open: load_bm25 (indexer.lexical.LexicalSegment)")
        sentence_vectors = version.load_sentence_vectors()
        step("Segment.open: load_sentence_vectors (sentences.npy, mapped)")
        segment = Segment(version, faiss_index, lexical, sentence_vectors)
        step("Segment: checks against the records, word counts, chunk vectors a view of the index")
        del segment, sentence_vectors, lexical, faiss_index, version
    gc.collect()
    last[:] = [time.perf_counter(), memory_mib(os.getpid())["rss"] or 0.0]  # the segments above released

    reader = LocalStoreReader.open(store, model_name, version_id)
    opened = step("LocalStoreReader.open: the commit, reusing nothing (every segment opened and checked)")
    loaded = LoadedIndex(reader)
    indexed = step("LoadedIndex: idf from the stored word counts")
    total = {
        "s": round(opened["s"] + indexed["s"], 2),
        "rss_added_mb": round(opened["rss_added_mb"] + indexed["rss_added_mb"], 1),
    }
    reload: dict[str, Any] | None = None
    if updated is not None and sg.commit_path(store, updated).is_file():
        newer = LocalStoreReader.open(store, model_name, updated, previous=reader)
        figures = step("reload: LocalStoreReader.open(the update's commit, previous=reader)")
        shared = sorted(set(newer.segment_names) & set(reader.segment_names))
        reloaded = LoadedIndex(newer)
        step("reload: LoadedIndex (idf: summed word counts less the deleted chunk's)")
        reload = {
            "commit": updated,
            "segments": len(newer.segment_names),
            "shared_with_previous": len(shared),
            "opened": len(newer.segment_names) - len(shared),
            **figures,
        }
        del reloaded, newer
    del loaded, reader
    gc.collect()
    return {"steps": steps, "total": total, "reload": reload}


def run(args: argparse.Namespace, store: Path, command: str) -> dict[str, Any]:
    from service.config import ServiceSettings

    load_start = load_average()
    code = code_state("service", "indexer", "bench/scale.py")
    n, q = args.chunks, args.questions
    log(f"splitting {args.corpus} into sentences ...")
    pool = sentence_pool(args.corpus)
    texts = split_pool(pool, args.seed)
    search_questions, ask_questions = texts.questions[:q], texts.questions[q : 2 * q]

    settings = IndexSettings()
    embedder = load_embedder(settings.model)  # the server's model: its name and size, the questions' vectors
    chunker = Chunker(
        embedder.tokenizer,
        ChunkerSettings(max_tokens=min(settings.chunk_tokens, embedder.info.max_seq_length)),
    )
    prefixes = Prefixes(chunker)
    corpus_sha = corpus_sha256(args.corpus)
    identity = {
        "benchmark": "bench.scale",
        "generator": GENERATOR,
        "chunks": n,
        "seed": args.seed,
        "corpus": str(args.corpus),
        "corpus_sha256": corpus_sha,
        "model": settings.model,
    }
    vectors = functools.cache(lambda: pool_vectors(pool, embedder, corpus_sha))
    version_id, build, reused = ensure_store(store, identity, texts, embedder, prefixes, vectors)
    disk = disk_usage(store, version_id)
    built = sg.read_commit(store, version_id)
    dense_index = sorted(
        {st.read_manifest(built.folder(store, entry)).index.dense for entry in built.segments}
    )

    log(f"encoding the {q} search questions here and searching exactly over the commit's vectors ...")
    exact = exact_top(store, version_id, question_vectors(embedder, search_questions), RECALL_K)
    k = min(RECALL_K, n)
    recalls: list[float] = []
    complete_under_default_fusion: list[bool] = []

    def check_search(i: int, answer: dict[str, Any]) -> None:
        """The default service: the answer is from the built version; note whether it happens to hold
        the whole dense top-k (informative: the default fusion does not promise it)."""
        if answer.get("index_version") != version_id:
            raise SystemExit(f"/v1/search answered from {answer.get('index_version')}, not {version_id}")
        complete_under_default_fusion.append(dense_ranks(answer, k) == list(range(1, k + 1)))

    def check_recall(i: int, answer: dict[str, Any]) -> None:
        if answer.get("index_version") != version_id:
            raise SystemExit(f"/v1/search answered from {answer.get('index_version')}, not {version_id}")
        served = dense_top(answer, k, search_questions[i])
        recalls.append(len(set(served) & set(exact[i])) / k)

    reload_interval = ServiceSettings().reload_interval
    with restored(store, version_id):
        log(f"starting the service over {store} ...")
        with (
            running_service(store, log_level="WARNING", timeout=READY_TIMEOUT) as server,
            httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as client,
        ):
            log(f"ready in {server.ready_seconds} s (pid {server.pid})")
            rss_ready = memory_mib(server.pid)
            for i, question in enumerate(texts.warmup):  # alternately search and ask
                route, body = (
                    ("/v1/search", {"query": question, "top_k": SEARCH_TOP_K})
                    if i % 2 == 0
                    else ("/v1/ask", {"question": question})
                )
                response = client.post(route, json=body)
                if response.status_code != 200:
                    raise SystemExit(
                        f"warm-up: POST {route} answered {response.status_code}: {response.text[:300]}"
                    )
            rss_warm = memory_mib(server.pid)
            server_malloc = malloc(server.pid)

            search = one_at_a_time(
                server,
                client,
                "/v1/search",
                search_questions,
                lambda question: {"query": question, "top_k": SEARCH_TOP_K},
                check_search,
            )
            ask = one_at_a_time(
                server,
                client,
                "/v1/ask",
                ask_questions,
                lambda question: {"question": question},
                lambda i, a: None,
            )

            doc_index = int(np.random.default_rng([args.seed, 4]).integers(n))
            log(f"updating one document ({doc_id_of(doc_index)}) and waiting until the service serves it ...")
            sampler = RssSampler(server.pid).start()
            rss_before_update = sampler.samples[0][1] if sampler.samples else None
            update_vectors = vectors()[[s.index for s in texts.update]]
            update = update_one_document(store, doc_index, texts.update, update_vectors, prefixes, args.seed)
            served = wait_served(server, client, update.version_id)
            sampler.stop()
            peak_at, peak = sampler.peak()
            rss_served = memory_mib(server.pid)
            document = client.get(f"/v1/documents/{quote(update.doc_id, safe='')}")
            if document.status_code != 200 or document.json().get("text") != update.text:
                raise SystemExit(
                    f"the service serves {update.version_id} but not the updated {update.doc_id}"
                )
            time.sleep(AFTER_RELOAD)
            rss_after = memory_mib(server.pid)
            log(
                f"served {served - update.began:.2f} s after the update began,"
                f" {served - update.published:.2f} s after publish"
            )
        # the built commit live again (the one the exact top-10 was computed over); the update's kept on
        # disk for the load profile's reload, removed on the way out
        restore(store, version_id, also_keep=[update.version_id])

        log(f"starting the service again, its fusion keeping the dense order ({RECALL_ENV}), for recall ...")
        with (
            running_service(
                store, log_level="WARNING", env={**os.environ, **RECALL_ENV}, timeout=READY_TIMEOUT
            ) as recall_server,
            httpx.Client(base_url=recall_server.url, timeout=REQUEST_TIMEOUT) as client,
        ):
            recall_phase = one_at_a_time(
                recall_server,
                client,
                "/v1/search",
                search_questions,
                lambda question: {"query": question, "top_k": SEARCH_TOP_K},
                check_recall,
            )
        profile = load_profile(store, version_id, settings.model, update.version_id)
    reading = machine()

    search_summary, ask_summary = search.summary(), ask.summary()
    disturbed = [
        f"{name}: {cores:.2f} cores"
        for name, cores in (("search", search.cpu.get("others_cores")), ("ask", ask.cpu.get("others_cores")))
        if cores is not None and cores > DISTURBED_CORES
    ]
    return {
        "chunks": n,
        "build_s": build.get("build_s"),
        "disk_mb": disk["store_mb"],
        "ready_s": server.ready_seconds,
        "rss_mb": rss_warm["rss"],
        "search_p50_ms": search_summary["latency_ms"]["p50"],
        "search_p95_ms": search_summary["latency_ms"]["p95"],
        "ask_p50_ms": ask_summary["latency_ms"]["p50"],
        "recall_at_10_vs_exact": round(sum(recalls) / len(recalls), 4),
        "update_one_doc_s": round(served - update.began, 2),
        "reload_s": round(served - update.published, 2),
        "rss_during_reload_mb": peak,
        # the rest
        "segments": len(built.segments),
        "dense_index": dense_index[0] if len(dense_index) == 1 else dense_index,
        "ask_p95_ms": ask_summary["latency_ms"]["p95"],
        "generator": GENERATOR,
        "vectors": VECTORS_NOTE,
        "units": "*_mb: MiB (2**20 bytes); *_s: seconds; *_ms: milliseconds",
        "documents": n,
        "sentences": n * SENTENCES_PER_DOC,
        "seed": args.seed,
        "corpus": str(args.corpus),
        "store": str(store),
        "store_reused": reused,
        "build": build,
        "disk": disk,
        "server": {
            "pid": server.pid,
            "ready_s": server.ready_seconds,
            "memory_mb_at_ready": rss_ready,
            "memory_mb_after_warmup": rss_warm,
            "malloc": server_malloc,
            "reload_interval_s": reload_interval,
            "ragqa_env": {key: value for key, value in os.environ.items() if key.startswith("RAGQA_")},
        },
        "questions": {
            "warmup": len(texts.warmup),
            "search": len(search_questions),
            "ask": len(ask_questions),
            "source": "held-out sentences of the corpus, in no document of the store, none repeated",
            "examples": search_questions[:3],
        },
        "search": {"top_k": SEARCH_TOP_K, **search_summary},
        "ask": ask_summary,
        "recall": {
            "k": k,
            "questions": len(recalls),
            "mean": round(sum(recalls) / len(recalls), 4),
            "min": min(recalls),
            "questions_below_1": sum(1 for r in recalls if r < 1),
            "how": (
                "passages of /v1/search (top_k 50) with dense_rank ≤ 10, from a second start of the"
                f" service with {RECALL_ENV} (fused score = the chunk's cosine, so the fused top 50 is the"
                " dense top 50; every answer checked to hold dense ranks 1..10), against numpy's exact"
                " top-10 over the same vectors"
            ),
            "recall_service_ready_s": recall_server.ready_seconds,
            "recall_service_search_p50_ms": recall_phase.summary()["latency_ms"]["p50"],
            "default_fusion_answers_with_the_whole_dense_top_10": (
                f"{sum(complete_under_default_fusion)} of {len(complete_under_default_fusion)}"
            ),
        },
        "update": {
            "doc_id": update.doc_id,
            "version": update.version_id,
            **update.steps_s,
            "publish_to_served_s": round(served - update.published, 2),
            "written_mb": update.written_mb,
            "written": update.written,
            "server_rss_mb": {
                "before": rss_before_update,
                "peak": peak,
                "peak_at_s_after_publish": round(peak_at - update.published, 2),
                "at_served": rss_served["rss"],
                f"{AFTER_RELOAD:g}_s_after_served": rss_after["rss"],
                "vmhwm_since_start": rss_after["peak"],
            },
            "rss_samples": len(sampler.samples),
        },
        "load_profile": profile,
        "disturbed_by_other_processes": disturbed,
        "machine": reading,
        "load_average_1min": {"start": load_start, "end": load_average()},
        "code": code,
        "created": now(),
        "command": command,
    }


# --- results: one row per N ----------------------------------------------------------------------


def merge(folder: Path, row: dict[str, Any]) -> dict[str, Any]:
    """scale.json's rows, this run's replacing the one of the same N; the other N's rows kept."""
    rows: dict[str, Any] = {}
    try:
        old = json.loads((folder / "scale.json").read_text(encoding="utf-8"))
        if isinstance(old, dict) and isinstance(old.get("rows"), dict):
            rows = old["rows"]
    except (OSError, ValueError):
        pass
    other = sorted(
        (key for key, old_row in rows.items() if old_row.get("generator") != row["generator"]), key=int
    )
    if other:  # another recipe's figures (random vectors, format-2 versions) do not compare with these
        log(f"scale.json: dropping the rows of N = {', '.join(other)}, not made by recipe {GENERATOR}")
        rows = {key: value for key, value in rows.items() if key not in other}
    rows[str(row["chunks"])] = row
    ordered = {key: rows[key] for key in sorted(rows, key=int)}
    return {"benchmark": "bench.scale", "description": (__doc__ or "").split("\n\n")[0], "rows": ordered}


def _kib(mb: float | None) -> float | None:
    return None if mb is None else round(mb * 1024, 1)


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    rows = list(result["rows"].values())
    names = [f"{row['chunks']:,}" for row in rows]
    growth = len(rows) >= 2
    header = "| measure | " + " | ".join(names) + (f" | × ({names[-1]} / {names[0]}) |" if growth else " |")
    lines = [
        "Synthetic stores of one-chunk documents (five real sentences each; each sentence's vector the"
        " model's, the chunk's the normalised mean of its five: recall measures the dense index, not the"
        " model), one segment written through indexer.segments and served by the real service; questions"
        " are held-out corpus sentences over HTTP, one at a time. MB are MiB.",
        "",
        header,
        "|---|" + "---:|" * (len(rows) + (1 if growth else 0)),
    ]
    digits = {"recall_at_10_vs_exact": 3, "chunks": 0}
    for key in HEADLINE:
        values = [row.get(key) for row in rows]
        cells = [_f(v, digits.get(key, 1)) for v in values]
        if growth:
            first, last = values[0], values[-1]
            ratio = (
                f"{last / first:.2f}"
                if isinstance(first, int | float) and first and last is not None
                else "–"
            )
            cells.append(ratio)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    extra: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("segments in the built commit", lambda r: r.get("segments")),
        ("dense index of the segment", lambda r: str(r.get("dense_index"))),
        ("ask_p95_ms", lambda r: r.get("ask_p95_ms")),
        ("search retrieve stage, mean ms", lambda r: r["search"]["server_metrics_mean_ms"].get("retrieve")),
        ("search encode stage, mean ms", lambda r: r["search"]["server_metrics_mean_ms"].get("encode")),
        ("the commit's segments on disk, MB", lambda r: r["disk"].get("segments_mb")),
        (
            "update: open the live store and find the document, s",
            lambda r: r["update"].get("read_live_store_s"),
        ),
        ("update: write the one-document segment, s", lambda r: r["update"].get("write_segment_s")),
        ("update: write the tombstone, s", lambda r: r["update"].get("write_deletions_s")),
        ("update: written (segment, tombstone, commit), KiB", lambda r: _kib(r["update"].get("written_mb"))),
        ("server RSS at ready, MB", lambda r: r["server"]["memory_mb_at_ready"]["rss"]),
        (
            "server RSS 3 s after the reload, MB",
            lambda r: r["update"]["server_rss_mb"].get("3_s_after_served"),
        ),
        ("open the commit in process (load profile), s", lambda r: r["load_profile"]["total"]["s"]),
        (
            "hot reload to the update's commit in process, s",
            lambda r: (r["load_profile"].get("reload") or {}).get("s"),
        ),
        ("store reused (build_s from the run that built it)", lambda r: "yes" if r["store_reused"] else "no"),
    ]
    for name, read in extra:
        values = [read(row) for row in rows]
        cells = [v if isinstance(v, str) else _f(v) for v in values]
        if growth:
            first, last = values[0], values[-1]
            numeric = isinstance(first, int | float) and isinstance(last, int | float) and first
            cells.append(f"{last / first:.2f}" if numeric else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Where opening the commit goes (in the bench process, as the service opens it): seconds / MiB added",
        "",
    ]
    steps = list(rows[-1]["load_profile"]["steps"])
    lines += ["| step | " + " | ".join(names) + " |", "|---|" + "---:|" * len(rows)]
    for step in steps:
        cells = []
        for row in rows:
            figures = row["load_profile"]["steps"].get(step)
            cells.append(f"{_f(figures['s'], 2)} s / {_f(figures['rss_added_mb'])}" if figures else "–")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines.append("")
    for row in rows:
        disturbed = row["disturbed_by_other_processes"]
        load = row["load_average_1min"]
        lines.append(
            f"- {row['chunks']:,} chunks, {row['created']}: {machine_summary(row['machine'])}; 1-min load"
            f" {load['start']} → {load['end']}; other processes' CPU during search / ask:"
            f" {_f(row['search'].get('others_cores'), 2)} / {_f(row['ask'].get('others_cores'), 2)} cores"
            + (f" (**disturbed**: {'; '.join(disturbed)})" if disturbed else "")
            + f"; commit {row['code']['commit']}; `{row['command']}`"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description="What a synthetic store of N chunks costs to build, keep, serve and update (issue 11).",
    )
    parser.add_argument(
        "--chunks", type=int, required=True, help="chunks (= one-chunk documents) in the store"
    )
    parser.add_argument("--store", type=Path, help=f"store folder, built or reused (default {SCALE_DIR}/N)")
    parser.add_argument(
        "--questions",
        type=int,
        default=200,
        help="questions to /v1/search and as many to /v1/ask (default 200)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the documents, vectors and questions")
    add_corpus_option(parser, DEFAULT_CORPUS)
    add_results_option(parser)
    args = parser.parse_args(argv)
    require_data(parser, args.corpus, "--corpus")
    if args.chunks < RECALL_K:
        parser.error(f"--chunks must be at least {RECALL_K}")
    if not 1 <= args.questions <= max_questions():
        parser.error(f"--questions must be 1..{max_questions()}")
    args.corpus = args.corpus.resolve()
    command = command_line("bench.scale", argv)
    offline()
    store = (args.store or SCALE_DIR / str(args.chunks)).resolve()
    row = run(args, store, command)
    merged = merge(args.results, row)
    with redirect_stdout(sys.stderr):  # the Markdown to stderr: stdout's one line is the JSON
        publish("scale", merged, markdown(merged), args.results)
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
