"""ANN: which FAISS index a large segment gets (indexer.dense), measured against exact search.

    python -m bench.ann --sizes 100000 1000000 [--queries 500] [--configs NAME ...] [--results DIR]

Realistic vectors, not random ones (uniform random 384-d vectors are the worst case for ANN and unlike
text embeddings): every distinct sentence of ../shared/data/corpus/wiki-leads-10k.jsonl (split as the
chunker splits, `indexer.chunking.split_sentences`; 4 words or more, 600 characters or fewer, as
bench/scale.py picks them) embedded by the real model, cached in var/scale as bench/scale.py caches
them (bench.harness.pool_vectors). 2,500 of them
are held out (seeded) as the queries; each database vector is the L2-normalised mean of 5 random
(seeded) non-held-out sentence vectors, which is how bench/scale.py builds its one-chunk documents of
five sentences. Ground truth: an exact faiss.IndexFlatIP over the same vectors.

For each size and index configuration, one JSON line: build_s (train and add), index_mb (the index as
written by faiss.write_index), search_p50_ms / search_p95_ms (one query at a time, one FAISS thread,
k=10, through `indexer.dense.search`), search_k50_p50_ms (k=50: the service's search with top_k 50),
search_2threads_p50_ms, recall_at_10 (against the exact top-10), and the same search and recall with
`allowed` rows of 1% and 10% of the segment (a random seeded subset, against the exact top-10 of those
rows). Each line records the 1-minute load average: the CPU is shared, other work skews the timings.

By default it measures the exact index and the one indexer.dense builds (at 1,000,000: about 6 minutes
on two idle cores, 4 of them building the HNSW graph). The sweep that chose it is `--configs` with
every name (HNSW M 16/32/48 x efConstruction 40/80, IVF-Flat nlist 1024/4096): run it at 100,000, and
at 1,000,000 only for the best one or two (an HNSW build there takes minutes each).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    REPO,
    add_corpus_option,
    add_results_option,
    command_line,
    corpus_sha256,
    distinct_picks,
    document_vectors,
    load_average,
    log,
    machine,
    machine_summary,
    now,
    offline,
    percentiles,
    pool_vectors,
    publish,
    require_data,
    sentence_pool,
    shared_data,
)

DEFAULT_CORPUS = shared_data("corpus/wiki-leads-10k.jsonl")
CACHE = REPO / "var" / "ann"  # where index files are written to be measured
HELD_OUT = 2500  # sentences that are queries, never in a database vector
SENTENCES_PER_VECTOR = 5
SEED = 11
K = 10
SELECTIVITIES = (0.01, 0.10)  # the share of rows `allowed` in the filtered searches
FILTERED_QUERIES = 200  # queries per filtered measure (each costs an exact ground truth of its own)
FLAT_QUERIES = 100  # the flat index is exact and slow at 1,000,000: its latency from fewer queries
SLAB = 65_536  # database rows made at a time


# --- the vectors ----------------------------------------------------------------------------------


def sentence_vectors(corpus: Path) -> np.ndarray:
    """The corpus sentences embedded by the real model (normalised float32 rows, corpus order): the
    pool bench/scale.py builds its documents from, cached as it caches it (bench.harness)."""
    from indexer.config import IndexSettings
    from indexer.embedding import load_embedder

    return pool_vectors(
        sentence_pool(corpus), load_embedder(IndexSettings().model, 64), corpus_sha256(corpus)
    )


@dataclass(frozen=True)
class Data:
    database: np.ndarray  # (size, d) float32, normalised
    queries: np.ndarray  # (HELD_OUT, d)


def make_data(sentences: np.ndarray, size: int, seed: int = SEED) -> Data:
    """Held-out queries and `size` database vectors, each the normalised mean of five distinct
    non-held-out sentence vectors (seeded)."""
    rng = np.random.default_rng([seed, 0])
    order = rng.permutation(len(sentences))
    queries = np.ascontiguousarray(sentences[order[:HELD_OUT]])
    pool = sentences[order[HELD_OUT:]]
    rng = np.random.default_rng([seed, 1])
    database = np.empty((size, sentences.shape[1]), np.float32)
    for at in range(0, size, SLAB):
        n = min(SLAB, size - at)
        picks = distinct_picks(rng, n, len(pool), SENTENCES_PER_VECTOR)
        database[at : at + n] = document_vectors(pool, picks)
    return Data(database, queries)


# --- the configurations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One index to measure: how to build it, and its search-time sweep (efSearch or nprobe)."""

    name: str
    kind: str  # "hnsw" | "ivf" | "flat"
    build: dict[str, int]
    sweep: tuple[int, ...]  # efSearch (hnsw) or nprobe (ivf); () for flat


CONFIGS = {
    c.name: c
    for c in (
        Config("flat", "flat", {}, ()),
        Config("hnsw16-40", "hnsw", {"M": 16, "efConstruction": 40}, (64, 128, 256, 512)),
        Config("hnsw16-80", "hnsw", {"M": 16, "efConstruction": 80}, (64, 128, 256, 512)),
        Config("hnsw32-40", "hnsw", {"M": 32, "efConstruction": 40}, (64, 128, 256, 384, 512)),
        Config("hnsw32-80", "hnsw", {"M": 32, "efConstruction": 80}, (64, 128, 256, 384, 512)),
        Config("hnsw48-40", "hnsw", {"M": 48, "efConstruction": 40}, (64, 128, 256, 512)),
        Config("ivf1024", "ivf", {"nlist": 1024}, (16, 32, 64, 128)),
        Config("ivf4096", "ivf", {"nlist": 4096}, (32, 64, 128, 256)),
    )
}

DEFAULT_CONFIGS = ("flat", "hnsw32-80")  # the sweep: --configs with the others (at 100,000 first)


def build(config: Config, vectors: np.ndarray) -> Any:
    """The index of a configuration over `vectors`, built as indexer.dense builds (HNSW and flat through
    `build_dense_index` itself, with its parameters set for the call); IVF-Flat here."""
    import faiss

    from indexer import dense

    d = vectors.shape[1]
    if config.kind == "flat":
        index: Any = faiss.IndexFlatIP(d)
        index.add(vectors)
        return index
    if config.kind == "hnsw":
        saved = (dense.EXACT_BELOW, dense.HNSW_M, dense.EF_CONSTRUCTION)
        dense.EXACT_BELOW, dense.HNSW_M, dense.EF_CONSTRUCTION = (
            1,
            config.build["M"],
            config.build["efConstruction"],
        )
        try:
            return dense.build_dense_index(vectors, d)
        finally:
            dense.EXACT_BELOW, dense.HNSW_M, dense.EF_CONSTRUCTION = saved
    nlist = config.build["nlist"]
    lib: Any = faiss  # its stubs lack the SWIG proxies' `this`
    quantizer = lib.IndexFlatIP(d)
    index = lib.IndexIVFFlat(quantizer, d, nlist, lib.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()
    train = np.random.default_rng([SEED, 2]).choice(
        len(vectors), min(len(vectors), 64 * nlist), replace=False
    )
    index.train(vectors[np.sort(train)])
    index.add(vectors)
    index.make_direct_map()  # reconstruct by id: the exact scan of a few allowed rows
    return index


def search(
    config: Config,
    index: Any,
    query: np.ndarray,
    k: int,
    allowed: np.ndarray | None,
    effort: int | None,
    exact_among: bool | None = None,
) -> np.ndarray:
    """The ids of one search: indexer.dense.search for flat and HNSW; for IVF-Flat the same contract
    with nprobe = `effort` (exact over the allowed rows below indexer.dense.EXACT_AMONG_BELOW)."""
    import faiss

    from indexer import dense

    lib: Any = faiss
    if config.kind != "ivf":
        return dense.search(index, query, k, allowed, ef_search=effort, exact_among=exact_among)[1]
    if allowed is None:
        return index.search(query, k, params=lib.SearchParametersIVF(nprobe=effort))[1]
    if exact_among if exact_among is not None else len(allowed) < dense.EXACT_AMONG_BELOW:
        return dense.search(index, query, k, allowed)[1]  # reconstructs the allowed rows
    bits = np.packbits(dense._mask(allowed, index.ntotal), bitorder="little")
    params = lib.SearchParametersIVF(nprobe=effort, sel=lib.IDSelectorBitmap(bits))
    return index.search(query, k, params=params)[1]


def exact_top(
    database: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None = None
) -> np.ndarray:
    """The exact top-k row ids for each query (a flat inner-product search), among `rows` if given."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    vectors = database if rows is None else np.ascontiguousarray(database[rows])
    flat = faiss.IndexFlatIP(database.shape[1])
    flat.add(vectors)
    ids: np.ndarray = flat.search(queries, k)[1]
    return ids if rows is None else rows[ids]


def recall(found: Sequence[np.ndarray], truth: np.ndarray) -> float:
    hits = sum(len(np.intersect1d(f[f >= 0][:K], t)) for f, t in zip(found, truth, strict=True))
    return round(hits / truth.size, 4)


def timed(
    queries: np.ndarray, run: Callable[[np.ndarray], np.ndarray], threads: int = 1
) -> tuple[dict[str, float], list[np.ndarray]]:
    """p50 and p95 ms of `run` over the queries one at a time (after 10 warm-up calls), and its ids."""
    import faiss

    faiss.omp_set_num_threads(threads)
    for q in queries[:10]:
        run(q.reshape(1, -1))
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        ids = run(q.reshape(1, -1))
        times.append((time.perf_counter() - started) * 1000)
        found.append(ids[0])
    p = percentiles(times)
    return {"p50": float(p["p50"] or 0), "p95": float(p["p95"] or 0)}, found


def rss_mib() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss / 2**20)


def index_file_mib(index: Any) -> float:
    import faiss

    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as folder:
        path = Path(folder) / "index.faiss"
        faiss.write_index(index, str(path))
        return round(path.stat().st_size / 2**20, 1)


@dataclass(frozen=True)
class Workload:
    """The queries of one size and their exact answers: unfiltered, and among each subset of rows."""

    queries: np.ndarray
    truth: np.ndarray
    filtered_queries: np.ndarray
    subsets: dict[float, np.ndarray]  # share of rows -> the allowed rows, sorted
    filtered_truth: dict[float, np.ndarray]


def workload(data: Data, queries: int) -> Workload:
    size = len(data.database)
    q = data.queries[:queries]
    fq = data.queries[queries : queries + FILTERED_QUERIES]
    if len(fq) < FILTERED_QUERIES:
        fq = data.queries[:FILTERED_QUERIES]
    rng = np.random.default_rng([SEED, 3, size])
    subsets = {
        share: np.sort(rng.choice(size, max(1, int(size * share)), replace=False)) for share in SELECTIVITIES
    }
    return Workload(
        queries=q,
        truth=exact_top(data.database, q, K),
        filtered_queries=fq,
        subsets=subsets,
        filtered_truth={share: exact_top(data.database, fq, K, rows) for share, rows in subsets.items()},
    )


def measure(config: Config, data: Data, work: Workload) -> list[dict[str, Any]]:
    """Build the configuration's index over the data, then one line per search effort (one for flat)."""
    import faiss

    size = len(data.database)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    load_before = load_average()
    rss_before = rss_mib()
    started = time.perf_counter()
    index = build(config, data.database)
    build_s = round(time.perf_counter() - started, 1)
    rss_added = round(rss_mib() - rss_before, 1)
    built = {
        "build_s": build_s,
        "build_load_1min": [load_before, load_average()],
        "index_file_mb": index_file_mib(index),
        "index_rss_mb": rss_added,
    }
    log(f"{config.name} at {size:,}: built in {build_s} s, {built['index_file_mb']} MiB")
    lines = []
    for effort in config.sweep or (None,):
        line: dict[str, Any] = {
            "size": size,
            "kind": config.kind,
            "config": config.name,
            "params": {
                **config.build,
                **({"nprobe" if config.kind == "ivf" else "efSearch": effort} if effort else {}),
            },
            **built,
            "queries": len(work.queries) if effort else min(len(work.queries), FLAT_QUERIES),
            "load_1min": load_average(),
            **measure_searches(config, index, effort, work),
            "load_1min_after": load_average(),
        }
        print(json.dumps(line), flush=True)
        lines.append(line)
    return lines


def measure_searches(config: Config, index: Any, effort: int | None, work: Workload) -> dict[str, Any]:
    """Latency and recall of one index at one search effort: unfiltered (k=10 on one and two threads,
    k=50), and filtered by each subset, by the exact scan of the allowed rows and by the ANN search."""

    def run(
        v: np.ndarray, k: int = K, allowed: np.ndarray | None = None, exact: bool | None = None
    ) -> np.ndarray:
        return search(config, index, v, k, allowed, effort, exact)

    out: dict[str, Any] = {}
    queries = work.queries if config.kind != "flat" else work.queries[:FLAT_QUERIES]
    one, found = timed(queries, run)
    out["search_p50_ms"], out["search_p95_ms"] = one["p50"], one["p95"]
    out["recall_at_10"] = recall(found, work.truth[: len(queries)])
    out["search_k50_p50_ms"] = timed(queries, lambda v: run(v, 50))[0]["p50"]
    out["search_2threads_p50_ms"] = timed(queries, run, threads=2)[0]["p50"]
    for share, rows in work.subsets.items():
        paths: dict[str, Any] = {"rows": len(rows)}
        modes: list[bool | None] = [None] if config.kind == "flat" else [True, False]
        for exact in modes:
            got, ids = timed(work.filtered_queries, partial(run, k=K, allowed=rows, exact=exact))
            name = "flat" if exact is None else ("exact_among" if exact else "ann_bitmap")
            paths[name] = {
                "p50_ms": got["p50"],
                "p95_ms": got["p95"],
                "recall_at_10": recall(ids, work.filtered_truth[share]),
            }
        out[f"filtered_{round(share * 100)}pct"] = paths
    return out


# --- the command ----------------------------------------------------------------------------------


def chosen(line: dict[str, Any]) -> bool:
    """Whether a line measures what indexer.dense builds and searches at its size."""
    from indexer import dense

    if line["size"] < dense.EXACT_BELOW:
        return line["kind"] == "flat"
    wanted = {"M": dense.HNSW_M, "efConstruction": dense.EF_CONSTRUCTION, "efSearch": dense.EF_SEARCH}
    return line["kind"] == "hnsw" and line["params"] == wanted


def filtered_cell(paths: dict[str, Any]) -> str:
    parts = [
        f"{name.replace('_', ' ')} {p['recall_at_10']:.3f} / {p['p50_ms']:.2f} ms"
        for name, p in paths.items()
        if name != "rows"
    ]
    return "; ".join(parts)


def filtered_chosen(line: dict[str, Any], key: str) -> str:
    """The filtered figures of the path indexer.dense.search takes for that many allowed rows."""
    from indexer import dense

    paths = line[key]
    name = (
        "flat"
        if "flat" in paths
        else "exact_among"
        if paths["rows"] < dense.EXACT_AMONG_BELOW
        else "ann_bitmap"
    )
    p = paths[name]
    return (
        f"{p['recall_at_10']:.3f} / {p['p50_ms']:.2f} ms ({name.replace('_', ' ')}, {paths['rows']:,} rows)"
    )


def index_name(line: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in line["params"].items())
    return f"{line['kind']} {params}".strip()


def table(lines: list[dict[str, Any]], reading: dict[str, Any]) -> str:
    """The Markdown summary: what indexer.dense chose at each size, then every line measured."""
    from indexer import dense

    ordered = sorted(lines, key=lambda x: (x["size"], x["config"], *x["params"].values()))
    rows = [
        "# ANN for a segment's dense index (indexer.dense, measured by bench/ann.py)",
        "",
        "Vectors: means of five real sentence embeddings (all-MiniLM-L6-v2, 384-d, sentences of"
        " wiki-leads-10k), as bench/scale.py's one-chunk documents; queries: held-out sentences. Latency:"
        " one query at a time on one FAISS thread through indexer.dense.search, k=10 (k50: k=50, the"
        " service's top_k 50; 2 thr: two OpenMP threads, which one query does not use). Recall@10 against"
        " exact search (IndexFlatIP). Filtered: `allowed` = a random 1% / 10% of the rows; recall against"
        " the exact top-10 of those rows / p50. Build: 2 OpenMP threads. MB are MiB: the index as written"
        " (file) and the RSS it added when built. Load: the 1-minute load average at the measure (2 cores"
        " shared with other work: a load above 2 slows every figure).",
        "",
        f"**Chosen**: `IndexFlatIP` below EXACT_BELOW = {dense.EXACT_BELOW:,} vectors; above,"
        f" `IndexHNSWFlat(M={dense.HNSW_M}, efConstruction={dense.EF_CONSTRUCTION})`, inner product,"
        f" efSearch = max({dense.EF_SEARCH}, k) per search; filtered: the exact scan of the allowed rows"
        f" below {dense.EXACT_AMONG_BELOW:,} of them, else the graph search with a bitmap (efSearch raised"
        f" as the allowed share falls, up to {dense.EF_FILTERED_MAX}).",
        "",
        "| size | index | build s | file MB | p50 ms | p95 ms | k50 p50 ms | recall@10 | filtered 1%"
        " | filtered 10% | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for line in ordered:
        if chosen(line) or (line["kind"] == "flat" and line["size"] >= dense.EXACT_BELOW):
            name = index_name(line) + (" (chosen)" if chosen(line) else " (for comparison)")
            rows.append(
                f"| {line['size']:,} | {name} | {line['build_s']} | {line['index_file_mb']} |"
                f" {line['search_p50_ms']:.2f} | {line['search_p95_ms']:.2f} |"
                f" {line['search_k50_p50_ms']:.2f} | {line['recall_at_10']:.3f} |"
                f" {filtered_chosen(line, 'filtered_1pct')} |"
                f" {filtered_chosen(line, 'filtered_10pct')} | {line['load_1min']} |"
            )
    rows += [
        "",
        "## Every configuration measured",
        "",
        "| size | index | build s | file MB | RSS MB | p50 ms | p95 ms | recall@10 | k50 p50 | 2 thr p50"
        " | filtered 1%: recall / p50 | filtered 10%: recall / p50 | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for line in ordered:
        name = f"**{index_name(line)}**" if chosen(line) else index_name(line)
        rows.append(
            f"| {line['size']:,} | {name} | {line['build_s']} | {line['index_file_mb']} |"
            f" {line['index_rss_mb']} | {line['search_p50_ms']:.2f} | {line['search_p95_ms']:.2f} |"
            f" {line['recall_at_10']:.3f} | {line['search_k50_p50_ms']:.2f} |"
            f" {line['search_2threads_p50_ms']:.2f} | {filtered_cell(line['filtered_1pct'])} |"
            f" {filtered_cell(line['filtered_10pct'])} | {line['load_1min']} |"
        )
    commands = sorted({line.get("command", "") for line in lines} - {""})
    rows += ["", *[f"- `{c}`" for c in commands], f"- {now()}: {machine_summary(reading)}"]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ann", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="database vectors")
    parser.add_argument("--queries", type=int, default=500, help="queries per unfiltered measure")
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=sorted(CONFIGS),
        default=list(DEFAULT_CONFIGS),
        help=f"what to measure (default {' '.join(DEFAULT_CONFIGS)}: exact and what indexer.dense builds)",
    )
    add_corpus_option(parser, DEFAULT_CORPUS)
    add_results_option(parser)
    args = parser.parse_args(argv)
    require_data(parser, args.corpus, "--corpus")
    if not 1 <= args.queries <= HELD_OUT - FILTERED_QUERIES:
        parser.error(f"--queries must be 1..{HELD_OUT - FILTERED_QUERIES}")
    offline()
    sentences = sentence_vectors(args.corpus)
    log(f"{len(sentences):,} sentence vectors")
    lines: list[dict[str, Any]] = []
    for size in args.sizes:
        data = make_data(sentences, size)
        work = workload(data, args.queries)
        for name in args.configs:
            lines += measure(CONFIGS[name], data, work)
        del data, work
    command = command_line("bench.ann", argv)
    for line in lines:
        line["command"] = command
    # Lines of earlier runs stay unless this run measured the same size and configuration again.
    path = args.results / "ann.json"
    previous = json.loads(path.read_text())["lines"] if path.is_file() else []

    def key(line: dict[str, Any]) -> tuple[int, str, str]:
        return line["size"], line["config"], json.dumps(line["params"], sort_keys=True)

    measured = {key(x) for x in lines}
    merged = [x for x in previous if key(x) not in measured] + lines
    reading = machine()
    result = {"created": now(), "machine": reading, "lines": merged}
    publish("ann", result, table(merged, reading), args.results)


if __name__ == "__main__":
    main()
