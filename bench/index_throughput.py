"""Indexing throughput: a whole `run_index` into a fresh store against the bare model encode.

    python -m bench.index_throughput [--corpus PATH] [--limit N] [--results DIR] [--no-breakdown]

Indexes the corpus (by default ../shared/data/corpus/wiki-leads-10k.jsonl, next to the repo) into a
fresh store in a temporary folder and times the whole in-process `run_index`. Then, in the same
process and with the same loaded model, it times one bare `SentenceTransformer.encode` call over the
very texts the indexer embedded (rebuilt from the store, in chunk order), with the same batch size
and normalize_embeddings=True. The goal is an indexing rate of at least 0.90 of the bare encode rate.
A second `run_index` over the unchanged corpus must embed nothing.

The breakdown of the index time comes from timing wrappers put around the pipeline's stages for the
duration of the run (a few microseconds a call); `--no-breakdown` leaves the code untouched.
Results go to bench/results/index_throughput.{json,md} (or --results DIR); the Markdown table is
printed as well.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    add_corpus_option,
    add_results_option,
    code_state,
    command_line,
    limited_corpus,
    load_average,
    machine,
    machine_summary,
    memory_mib,
    now,
    offline,
    own_cpu_seconds,
    publish,
    read_corpus,
    require_data,
    shared_data,
)
from indexer import store as st
from indexer.chunking import Chunker, ChunkerSettings
from indexer.config import IndexSettings
from indexer.embedding import load_embedder
from indexer.pipeline import _relative, run_index

DEFAULT_CORPUS = shared_data("corpus/wiki-leads-10k.jsonl")
GOAL = 0.90
WARMUP_TEXTS = 64

# --- measuring -------------------------------------------------------------------------------


@dataclass
class StageTimers:
    """Wall time spent in chosen functions, accumulated while `installed()` has them wrapped."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def _wrap(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
                self.calls[label] = self.calls.get(label, 0) + 1

        return timed

    @contextmanager
    def installed(self, targets: list[tuple[Any, str, str]]) -> Iterator[None]:
        """Wrap `owner.attribute` for each (owner, attribute, label); put the originals back after.
        An attribute the code no longer has is left out (its stage then reports no calls)."""
        present = [(owner, name, label) for owner, name, label in targets if hasattr(owner, name)]
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in present]
        try:
            for owner, name, label in present:
                setattr(owner, name, self._wrap(getattr(owner, name), label))
            yield
        finally:
            for owner, name, original in reversed(originals):
                setattr(owner, name, original)


# Top-level stages do not nest in one another; the indented ones ("  of which") lie inside the
# stage above them. What no stage covers (hashing chunk texts, building records, stacking
# vectors, locking, publishing) is reported as "other".
STAGES: list[tuple[str, str, str, bool]] = [
    # (module or class path, attribute, label, top level)
    ("indexer.pipeline", "discover", "discover files", True),
    ("indexer.pipeline", "_plan_documents", "load + parse + hash documents", True),
    ("indexer.chunking.Chunker", "chunk", "chunking", True),
    ("indexer.chunking", "split_sentences", "  of which syntok sentence split", False),
    ("indexer.chunking.Chunker", "_embedded_tokens", "  of which re-tokenizing packed chunks", False),
    ("indexer.chunking.Chunker", "embed_prefix", "title prefix (embed_prefix)", True),
    ("indexer.store.EmbeddingCache", "get_many", "embedding cache lookup (sqlite)", True),
    (
        "indexer.embedding.Embedder",
        "encode_with_sentences",
        "model pass + sentence pooling (a call a slab)",
        True,
    ),
    ("indexer.store.EmbeddingCache", "put_many", "embedding cache writes (sqlite)", True),
    ("indexer.segments", "write_segment", "write segment", True),
    ("indexer.store", "_write_jsonl", "  of which documents/chunks jsonl", False),
    ("indexer.lexical.LexicalSegment", "write", "  of which bm25 index", False),
    ("indexer.segments", "sum_folder", "  of which checksums", False),
    ("indexer.segments", "collect_garbage", "remove unused segments", True),
    ("indexer.store.EmbeddingCache", "keep_only", "embedding cache pruning (sqlite)", True),
]


def _resolve(dotted: str) -> Any:
    import importlib

    module_name, _, class_name = dotted.rpartition(".")
    if class_name[:1].isupper():
        return getattr(importlib.import_module(module_name), class_name)
    return importlib.import_module(dotted)


def breakdown_rows(timers: StageTimers, total: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    covered = 0.0
    for _, _, label, top in STAGES:
        seconds = timers.seconds.get(label, 0.0)
        covered += seconds if top else 0.0
        rows.append({"stage": label, "seconds": round(seconds, 3), "calls": timers.calls.get(label, 0)})
    rows.append({"stage": "other", "seconds": round(total - covered, 3), "calls": None})
    for row in rows:
        row["share"] = round(row["seconds"] / total, 4) if total else 0.0
    return rows


# --- the run ---------------------------------------------------------------------------------


def embedded_texts(settings: IndexSettings) -> tuple[list[str], int]:
    """The texts the indexer embedded, in chunk order, rebuilt from the store; and how many of them
    do not hash to their chunk's recorded hash (must be 0)."""
    from indexer import segments as sg

    commit = sg.read_commit(settings.local_store)
    (entry,) = commit.segments  # a fresh store: one segment
    version = st.open_folder(settings.local_store, commit.folder(settings.local_store, entry), entry.name)
    fingerprint = version.manifest.chunker
    chunker = Chunker(
        load_embedder(settings.model, settings.batch_size).tokenizer,
        ChunkerSettings(max_tokens=fingerprint.max_tokens, overlap_sentences=fingerprint.overlap_sentences),
    )
    prefixes = {doc_id: chunker.embed_prefix(d.title) for doc_id, d in version.documents.items()}
    texts = [prefixes[c.doc_id] + version.chunk_text(c) for c in version.chunks]
    mismatched = sum(
        1
        for c, t in zip(version.chunks, texts, strict=True)
        if st.chunk_hash(t, _relative(c.sentences, c.start - len(prefixes[c.doc_id]))) != c.hash
    )
    return texts, mismatched


def run(corpus: Path, limit: int | None, breakdown: bool) -> dict[str, Any]:
    rss_start = memory_mib(os.getpid())["rss"]
    measured_code = indexer_state()  # now, as the indexer modules are already imported
    with tempfile.TemporaryDirectory(prefix="ragqa-bench-") as tmp:
        source = limited_corpus(corpus, limit, Path(tmp) / "corpus") if limit else corpus
        settings = IndexSettings.model_validate({"store": Path(tmp) / "store"})

        # Warm up: load the model once (run_index gets the same object from load_embedder's cache)
        # and encode a few real texts, so that neither side pays for loading or first calls.
        embedder = load_embedder(settings.model, settings.batch_size)
        embedder.encode([doc.text for doc in read_corpus(source, WARMUP_TEXTS)])
        memory_before = memory_mib(os.getpid())
        load = {"before_index": load_average()}

        timers = StageTimers()
        targets = [(_resolve(owner), name, label) for owner, name, label, _ in STAGES] if breakdown else []
        print(f"indexing {source} into a fresh store ...", file=sys.stderr, flush=True)
        with timers.installed(targets):
            cpu, started = own_cpu_seconds(), time.perf_counter()
            report = run_index([source], settings)
            index_seconds = time.perf_counter() - started
            index_cpu = own_cpu_seconds() - cpu
        load["after_index"] = load_average()
        peak_after_index = memory_mib(os.getpid())["peak"]

        texts, mismatched = embedded_texts(settings)
        print(f"bare encode of {len(texts)} chunk texts ...", file=sys.stderr, flush=True)
        cpu, started = own_cpu_seconds(), time.perf_counter()
        vectors = embedder.model.encode(
            texts,
            batch_size=settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        encode_seconds = time.perf_counter() - started
        encode_cpu = own_cpu_seconds() - cpu
        load["after_bare_encode"] = load_average()
        del vectors
        peak_after_encode = memory_mib(os.getpid())["peak"]

        print("incremental run on the unchanged corpus ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        again = run_index([source], settings)
        again_seconds = time.perf_counter() - started

    index_rate = report.chunks / index_seconds
    encode_rate = len(texts) / encode_seconds
    ratio = index_rate / encode_rate
    return {
        "created": now(),
        "corpus": str(corpus),
        "limit": limit,
        "settings": {
            "model": settings.model,
            "batch_size": settings.batch_size,
            "chunk_tokens": settings.chunk_tokens,
            "chunk_overlap": settings.chunk_overlap,
        },
        "environment": {
            **machine(),
            "load_average_1min": load,
            "indexer": measured_code,
        },
        "documents": report.documents,
        "chunks": report.chunks,
        "embedded": report.embedded,
        "unique_texts": len(set(texts)),
        "skipped": len(report.skipped),
        "rebuilt_text_hash_mismatches": mismatched,
        "index": {
            "seconds": round(index_seconds, 3),
            "chunks_per_s": round(index_rate, 2),
            "report_seconds": report.seconds,
            "cpu_seconds": round(index_cpu, 2),
        },
        "bare_encode": {
            "seconds": round(encode_seconds, 3),
            "chunks_per_s": round(encode_rate, 2),
            "cpu_seconds": round(encode_cpu, 2),
        },
        "ratio": round(ratio, 4),
        # Less sensitive to other work on the machine than the wall-clock ratio.
        "cpu_ratio": round(encode_cpu / index_cpu, 4) if index_cpu else None,
        "goal": GOAL,
        "goal_met": ratio >= GOAL,
        "breakdown": breakdown_rows(timers, index_seconds) if breakdown else None,
        "memory_mib": {
            "rss_at_start": rss_start,
            "rss_before_index": memory_before["rss"],
            "peak_rss_before_index": memory_before["peak"],
            "peak_rss_after_index": peak_after_index,
            "peak_rss_after_bare_encode": peak_after_encode,
        },
        "incremental": {
            "seconds": round(again_seconds, 3),
            "embedded": again.embedded,
            "published": again.published,
            "ok": again.embedded == 0,
        },
    }


def indexer_state() -> dict[str, Any]:
    """Which indexer code was measured: the commit, files changed since, and the encode slab size."""
    import inspect

    from indexer.embedding import Embedder

    return {
        **code_state("indexer"),
        "slab_size": inspect.signature(Embedder.encode_in_slabs).parameters["slab_size"].default,
    }


# --- reporting -------------------------------------------------------------------------------


def markdown(result: dict[str, Any], command: str) -> str:
    index, bare, memory, incremental = (
        result["index"],
        result["bare_encode"],
        result["memory_mib"],
        result["incremental"],
    )
    settings, environment = result["settings"], result["environment"]
    corpus = Path(result["corpus"]).name + (f" (first {result['limit']})" if result["limit"] else "")
    goal = f"goal ≥ {result['goal']:.2f}: {'met' if result['goal_met'] else 'NOT met'}"
    rows = [
        ("machine", machine_summary(environment)),
        ("corpus", corpus),
        ("documents", f"{result['documents']:,}"),
        ("chunks", f"{result['chunks']:,} ({result['unique_texts']:,} distinct texts)"),
        ("model / batch size", f"{settings['model']} / {settings['batch_size']}"),
        ("torch threads / CPUs", f"{environment['torch_threads']} / {environment['cpus']}"),
        (
            "1-min load average (before index / after index / after encode)",
            " / ".join(str(v) for v in environment["load_average_1min"].values()),
        ),
        (
            "run_index (fresh store)",
            _timing(index),
        ),
        (
            "bare model.encode",
            _timing(bare),
        ),
        (
            "ratio index / bare encode",
            f"**{result['ratio']:.3f}** ({goal})",
        ),
        ("CPU-time ratio (bare encode CPU s / index CPU s)", f"{result['cpu_ratio']:.3f}"),
        ("RSS before index (model loaded)", f"{memory['rss_before_index']} MiB"),
        ("peak RSS after index", f"{memory['peak_rss_after_index']} MiB"),
        ("peak RSS at the end", f"{memory['peak_rss_after_bare_encode']} MiB"),
        (
            "incremental run_index (unchanged)",
            f"{incremental['seconds']:.2f} s, embedded {incremental['embedded']}"
            f" ({'ok' if incremental['ok'] else 'FAILED: expected 0'})",
        ),
    ]
    lines = ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    if result["breakdown"]:
        lines += ["", "| index stage | seconds | share | calls |", "|---|---:|---:|---:|"]
        for row in result["breakdown"]:
            calls = "" if row["calls"] is None else f"{row['calls']:,}"
            lines.append(f"| {row['stage']} | {row['seconds']:.2f} | {row['share']:.1%} | {calls} |")
    lines += ["", f"`{command}`"]
    return "\n".join(lines)


def _timing(measured: dict[str, Any]) -> str:
    return (
        f"{measured['seconds']:.1f} s, **{measured['chunks_per_s']:.1f} chunks/s**"
        f" ({measured['cpu_seconds']:.0f} CPU s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.index_throughput",
        description="Time run_index into a fresh store against the bare model encode of the same chunks.",
    )
    add_corpus_option(parser, DEFAULT_CORPUS)
    parser.add_argument("--limit", type=int, help="index only the first N documents (for a quick try)")
    add_results_option(parser)
    parser.add_argument("--no-breakdown", action="store_true", help="do not time the pipeline's stages")
    args = parser.parse_args(argv)
    require_data(parser, args.corpus, "--corpus")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")

    command = command_line("bench.index_throughput", argv)
    offline()
    result = run(args.corpus.resolve(), args.limit, breakdown=not args.no_breakdown)
    result["command"] = command
    publish("index_throughput", result, markdown(result, command), args.results)
    return 0 if result["incremental"]["ok"] and not result["rebuilt_text_hash_mismatches"] else 1


if __name__ == "__main__":
    sys.exit(main())
