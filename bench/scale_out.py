"""Scale-out figures on this machine: the plain indexer against `ragqa-index --ray` writing a Milvus
server (a `milvus-lite server` process) and its local store, and the service's /v1/search over each.

    .venv/bin/python -m bench.scale_out [--corpus ../shared/data/corpus/wiki-leads-10k.jsonl]
                                        [--limit N] [--searches 200]

1. plain: `ragqa-index CORPUS --store FOLDER` into an empty local store;
2. ray: `ragqa-index CORPUS --ray --store milvus://127.0.0.1:PORT/ragqa` with an empty work store: Ray
   loads, chunks and embeds; the local store is written; the version is then exported to Milvus
   through the Ray datasink (its seconds from the run's `index.exported` log line);
3. serving: the service over each store answers the same `--searches` questions (made from the
   corpus) one at a time: /v1/search p50/p95, and the resident memory of the service and of the
   Milvus engine.

Each run is a process of its own, from empty stores, so the embedding cache helps neither. Results go
to bench/results/scale_out.{md,json}. Needs the extras ragqa[ray,milvus] and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    REPO,
    add_corpus_option,
    add_results_option,
    command_line,
    cpu_seconds,
    limited_corpus,
    log,
    machine,
    machine_summary,
    make_questions,
    memory_mib,
    now,
    offline,
    percentiles,
    publish,
    read_corpus,
    require_data,
    shared_data,
)
from service.processes import LiteServer, running_service

DEFAULT_CORPUS = shared_data("corpus/wiki-leads-10k.jsonl")
WARM_UP = 5  # searches before the measured ones


def index_run(corpus: Path, store: str, env: dict[str, str], *extra: str) -> dict[str, Any]:
    """One `ragqa-index` process: its report, wall seconds, and the export log line if any."""
    command = [sys.executable, "-m", "indexer.cli", str(corpus), "--store", store, "--json"]
    command += ["--log-level", "INFO", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"ragqa-index failed:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    exported = [json.loads(line) for line in done.stderr.splitlines() if '"index.exported"' in line]
    return {
        "report": report,
        "seconds": round(seconds, 1),
        "chunks_per_second": round(report["chunks"] / seconds, 1),
        "export": exported[0] if exported else None,
    }


def search_latency(url: str, questions: list[str]) -> dict[str, Any]:
    times: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for question in questions[:WARM_UP]:
            client.post("/v1/search", json={"query": question, "top_k": 10}).raise_for_status()
        for question in questions:
            started = time.perf_counter()
            client.post("/v1/search", json={"query": question, "top_k": 10}).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    p = percentiles(times)
    return {"p50_ms": p["p50"], "p95_ms": p["p95"], "searches": len(times)}


def serve_figures(
    store: str, engine_pid: int | None, questions: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """The service over `store` answering the questions: latency, and CPU time a search and memory
    of the service (and of the Milvus engine, `engine_pid`)."""
    with running_service(store, env=env) as service:
        pids = {"service": service.pid, "engine": engine_pid}
        before = {who: cpu_seconds(pid) for who, pid in pids.items()}
        figures = search_latency(service.url, questions)
        searches = len(questions) + WARM_UP
        for who, pid in pids.items():
            if pid is None:
                continue
            used = (cpu_seconds(pid) or 0.0) - (before[who] or 0.0)
            figures[f"{who}_cpu_ms"] = round(used * 1000 / searches, 2)
            figures[f"{who}_rss_mib"] = memory_mib(pid)["rss"]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_out", description=__doc__.split("\n")[0])
    add_corpus_option(parser, DEFAULT_CORPUS)
    add_results_option(parser)
    parser.add_argument("--limit", type=int, help="index only the corpus's first N documents")
    parser.add_argument("--searches", type=int, default=200, help="questions asked of each service")
    args = parser.parse_args(argv)
    require_data(parser, args.corpus, "--corpus")
    offline()

    root = Path(tempfile.mkdtemp(prefix="ragqa-scale-out-", dir=REPO / "var"))
    corpus = limited_corpus(args.corpus, args.limit, root) if args.limit else args.corpus
    questions = make_questions(read_corpus(corpus), args.searches, seed=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    result: dict[str, Any] = {"when": now(), "command": command_line("bench.scale_out", argv)}
    result["machine"] = machine()
    result["corpus"] = str(corpus)
    try:
        log("plain: ragqa-index into an empty local store ...")
        result["plain"] = plain = index_run(corpus, str(root / "plain"), env)
        with LiteServer(root / "milvus") as engine:
            log("ray: ragqa-index --ray into Milvus (and its local work store) ...")
            ray_env = {**env, "RAGQA_WORK_STORE": str(root / "ray-work")}
            result["ray"] = ray = index_run(corpus, engine.store, ray_env, "--ray")
            result["ray_over_plain_throughput"] = round(
                ray["chunks_per_second"] / plain["chunks_per_second"], 3
            )
            serving: dict[str, Any] = {}
            for name, store in (("local", str(root / "plain")), ("milvus", engine.store)):
                log(f"serving: /v1/search over the {name} store ...")
                engine_pid = engine.process.pid if name == "milvus" and engine.process else None
                serving[name] = serve_figures(store, engine_pid, questions, env)
            result["serving"] = serving
    finally:
        shutil.rmtree(root, ignore_errors=True)

    export = ray["export"] or {}
    rows = [
        ("plain ragqa-index → local store", plain["seconds"], plain["chunks_per_second"]),
        ("ragqa-index --ray → local + Milvus", ray["seconds"], ray["chunks_per_second"]),
    ]
    text = "\n".join(
        [
            "# Scale-out: Ray indexing and the Milvus store",
            "",
            f"`{result['command']}` ({result['when']}; {machine_summary(result['machine'])})",
            "",
            f"Corpus: {corpus.name}, {plain['report']['documents']:,} documents, "
            f"{plain['report']['chunks']:,} chunks.",
            "",
            "| run | seconds | chunks/s |",
            "|---|---:|---:|",
            *[f"| {name} | {seconds:.1f} | {rate:.1f} |" for name, seconds, rate in rows],
            "",
            f"Ray's throughput over the plain run's: **{result['ray_over_plain_throughput']:.2f}**. "
            f"Of the Ray run, the export to Milvus ({export.get('by', '?')}, "
            f"{export.get('chunks', 0):,} chunks) took {export.get('seconds', float('nan')):.1f} s.",
            "",
            "| /v1/search (top_k 10, one at a time) | p50 ms | p95 ms | service CPU ms a search | "
            "engine CPU ms a search | service RSS MiB | engine RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *[
                f"| {name} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | {s.get('service_cpu_ms', '')} | "
                f"{s.get('engine_cpu_ms', '')} | {s['service_rss_mib']} | {s.get('engine_rss_mib', '')} |"
                for name, s in result["serving"].items()
            ],
            "",
            f"CPU a search: CPU time over the searches (and {WARM_UP} warm-up ones), per search.",
        ]
    )
    publish("scale_out", result, text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
