"""Serving latency: /v1/search and /v1/ask over real HTTP against the bare model encode (the floor).

    python -m bench.serve_latency [--corpus PATH] [--store DIR] [--limit N] [--url URL] [--seed S]
                                  [--requests N] [--throughput-requests N] [--results DIR]

Indexes the corpus (by default ../shared/data/corpus/wiki-leads-10k.jsonl, next to the repo) into
--store in process, incrementally (the first run takes about five minutes on 2 cores, a rerun reuses
the store), starts the real server (`python -m service.cli`) on a free port of 127.0.0.1, waits for
/readyz, and then measures with keep-alive httpx clients, one per thread:

- p50 and p95 of POST /v1/search {"query", "top_k": 10} and POST /v1/ask {"question"} at
  concurrency 1 and 8;
- asks/s at concurrency 16 over a fixed number of requests, with p50, p95 and the non-200 count;
- in this process, the floor: the bare `model.encode([q])` of the concurrency-1 search questions,
  one at a time, with the same model the server loads.

- in this process too, the question encoder the service uses by default: ONNX Runtime
  (indexer.onnx_encoder) on the same questions, one at a time; the exact dense search of their
  vectors in the same store (one thread, as the service); and a GET /healthz round trip over the
  phases' kind of client. Their sum is what no search can go below on this machine, printed as a
  ratio to the floor beside the goal.

Goals (issue 13): search p50 ≤ 0.6 × floor p50, ask p50 ≤ 1.2 × search p50, ≥ 250 asks/s at 16
(issue 3's were 1.5, 1.5 and 80).

The questions are made from the indexed documents themselves, deterministically (`--seed`): a
template over a title ("What is <title>?", ...) or a fragment of a first sentence. The server caches
question vectors, so every phase gets its own fresh questions and none repeats across phases; 20
other questions warm the server up first. Every phase is bounded in requests and in time, and all
traffic goes to 127.0.0.1. Where the time goes comes from the server itself: the `timings_ms` of
each ask (encode, retrieve, answer), the stage and route histograms of /metrics (sums and counts
read before and after each phase) and the server's CPU time (psutil).

`--limit N` indexes only the first N documents (into a store of its own) for a quick check; `--url`
measures a server that already runs on this machine and skips the store and the server start.
Results go to bench/results/serve_latency.{json,md} (or --results DIR); the Markdown table is
printed as well.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.harness import (
    REPO,
    STAGES,
    CpuMeter,
    MetricSamples,
    add_corpus_option,
    add_results_option,
    build_store,
    code_state,
    command_line,
    limited_corpus,
    listening_pid,
    load_average,
    machine,
    machine_summary,
    make_questions,
    malloc,
    memory_mib,
    now,
    offline,
    percentiles,
    publish,
    read_corpus,
    require_data,
    scrape,
    shared_data,
    stage_means_ms,
)
from service.processes import running_service

DEFAULT_CORPUS = shared_data("corpus/wiki-leads-10k.jsonl")
DEFAULT_STORE = Path("var/bench/wiki-leads-10k-store")
READY_TIMEOUT = 600.0  # seconds for the server to load the store
REQUEST_TIMEOUT = 30.0
WARMUP_QUESTIONS = 20
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DISTURBED_CORES = 0.25  # other processes' CPU use above which a phase's figures are not to be trusted
GOALS = {"search_over_floor": 0.6, "ask_over_search": 1.2, "asks_per_s_at_16": 250.0}  # issue 13

# --- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """The server measured: one started here over the store, or one already running (--url)."""

    url: str
    pid: int | None
    command: list[str] | None = None
    ready_seconds: float | None = None


@contextmanager
def server_to_measure(url: str | None, store: Path | None) -> Iterator[Served]:
    """The server at `url`, its pid looked up for the CPU and memory figures; or, without a url, the
    real service over `store` on a free port of 127.0.0.1 (service/processes.py), stopped on exit."""
    if store is None:
        assert url is not None
        yield Served(url, listening_pid(url))
        return
    with running_service(store.resolve(), log_level="WARNING", timeout=READY_TIMEOUT) as server:
        print(f"started the server: {' '.join(server.command)}", file=sys.stderr, flush=True)
        yield Served(server.url, server.pid, server.command, server.ready_seconds)


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Sample:
    ms: float
    status: int  # 0: no HTTP answer (connection error or timeout)
    timings: dict[str, float] | None = None


@dataclass
class Phase:
    name: str
    route: str
    concurrency: int
    planned: int
    samples: list[Sample] = field(default_factory=list)
    wall_seconds: float = 0.0
    timed_out: bool = False
    server_cpu_seconds: float | None = None
    client_cpu_seconds: float = 0.0
    others_cores: float | None = None
    metrics_before: MetricSamples = field(default_factory=dict)
    metrics_after: MetricSamples = field(default_factory=dict)
    load_before: float | None = None
    load_after: float | None = None

    def summary(self) -> dict[str, Any]:
        ok = [s.ms for s in self.samples if s.status == 200]
        statuses = Counter(str(s.status) for s in self.samples if s.status != 200)
        done = len(self.samples)
        stages: dict[str, Any] = {}
        timed = [s.timings for s in self.samples if s.timings]
        for stage in STAGES:
            values = [t[stage] for t in timed if stage in t]
            if values:
                stages[stage] = percentiles(values)
        if timed:
            stages["total"] = percentiles([sum(t.values()) for t in timed])
            outside = [s.ms - sum(s.timings.values()) for s in self.samples if s.timings]
            stages["outside_stages"] = percentiles(outside)
        return {
            "phase": self.name,
            "route": self.route,
            "concurrency": self.concurrency,
            "planned": self.planned,
            "completed": done,
            "timed_out": self.timed_out,
            "non_200": done - len(ok),
            "statuses": dict(statuses),
            "latency_ms": percentiles(ok),
            "wall_seconds": round(self.wall_seconds, 3),
            "requests_per_s": round(done / self.wall_seconds, 2) if self.wall_seconds else None,
            "server_timings_ms": stages or None,
            "server_metrics_mean_ms": stage_means_ms(self.metrics_before, self.metrics_after, self.route),
            "server_cpu_ms_per_request": round(self.server_cpu_seconds / done * 1000, 2)
            if self.server_cpu_seconds is not None and done
            else None,
            "client_cpu_ms_per_request": round(self.client_cpu_seconds / done * 1000, 2) if done else None,
            "other_processes_cores": self.others_cores,
            "load_average_1min": {"before": self.load_before, "after": self.load_after},
        }


def body_for(route: str, question: str) -> dict[str, Any]:
    return {"query": question, "top_k": 10} if route == "/v1/search" else {"question": question}


def run_phase(
    server: Served, name: str, route: str, questions: list[str], concurrency: int, time_limit: float
) -> Phase:
    """Send each question once, from `concurrency` threads, each with its own keep-alive client;
    stop early (and say so) when `time_limit` seconds have passed."""
    phase = Phase(name, route, concurrency, len(questions))
    work: queue.SimpleQueue[str] = queue.SimpleQueue()
    for question in questions:
        work.put(question)
    start = threading.Barrier(concurrency + 1)
    lock = threading.Lock()
    finished: list[float] = []
    deadline = [0.0]
    print(
        f"{name}: {len(questions)} × POST {route} at concurrency {concurrency} ...",
        file=sys.stderr,
        flush=True,
    )

    def worker() -> None:
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as client:
            client.get("/healthz")  # open the keep-alive connection before the clock starts
            start.wait()
            while time.perf_counter() < deadline[0]:
                try:
                    question = work.get_nowait()
                except queue.Empty:
                    break
                began = time.perf_counter()
                try:
                    response = client.post(route, json=body_for(route, question))
                    status = response.status_code
                except httpx.HTTPError:
                    response, status = None, 0
                ms = (time.perf_counter() - began) * 1000
                timings = None
                if response is not None and status == 200 and route == "/v1/ask":
                    timings = {k: float(v) for k, v in response.json().get("timings_ms", {}).items()}
                with lock:
                    phase.samples.append(Sample(ms, status, timings))
            with lock:
                finished.append(time.perf_counter())

    phase.metrics_before = scrape(server.url)
    phase.load_before = load_average()
    threads = [threading.Thread(target=worker, name=f"bench-{i}", daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    meter = CpuMeter(server.pid)
    deadline[0] = time.perf_counter() + time_limit + 1.0  # set before the workers pass the barrier
    start.wait()
    meter.start()
    began = meter.began
    deadline[0] = began + time_limit
    for thread in threads:
        thread.join(timeout=time_limit + REQUEST_TIMEOUT + 10)
    phase.wall_seconds = (max(finished) if finished else time.perf_counter()) - began
    cpu = meter.stop()
    phase.client_cpu_seconds = cpu["bench_cpu_seconds"] or 0.0
    phase.server_cpu_seconds = cpu["server_cpu_seconds"]
    phase.others_cores = cpu["others_cores"]
    phase.load_after = load_average()
    phase.timed_out = len(phase.samples) < len(questions)
    phase.metrics_after = scrape(server.url)
    return phase


def floor_pass(model: Any, questions: list[str]) -> list[float]:
    """Milliseconds of the bare `model.encode([q])` of each question, one at a time."""
    times = []
    for question in questions:
        began = time.perf_counter()
        model.encode([question], show_progress_bar=False)
        times.append((time.perf_counter() - began) * 1000)
    return times


def onnx_pass(encoder: Any, questions: list[str]) -> list[float]:
    """Milliseconds of the ONNX Runtime encoder's `encode_short([q])` of each question, one at a time."""
    times = []
    for question in questions:
        began = time.perf_counter()
        encoder.encode_short([question])
        times.append((time.perf_counter() - began) * 1000)
    return times


def dense_pass(store: Path, model_name: str, encoder: Any, questions: list[str]) -> list[float]:
    """Milliseconds of the exact dense search (top 10) of each question's ONNX vector in the store's
    live version, in this process, one thread as the service searches; each question is encoded
    right before its search (untimed), so the search meets the caches as a request's does."""
    import faiss

    from service.index import LoadedIndex

    faiss.omp_set_num_threads(1)
    index = LoadedIndex.load(store, model_name)
    times = []
    for question in questions:
        vector = encoder.encode_short([question])[0]
        began = time.perf_counter()
        index.dense(vector, 10)
        times.append((time.perf_counter() - began) * 1000)
    return times


def http_pass(url: str, requests: int) -> list[float]:
    """Milliseconds of GET /healthz (a route that does nothing) one at a time over one keep-alive
    client, as the phases' clients send: what HTTP alone costs a request on this machine."""
    times = []
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        client.get("/healthz")
        for _ in range(requests):
            began = time.perf_counter()
            client.get("/healthz").raise_for_status()
            times.append((time.perf_counter() - began) * 1000)
    return times


def floor_summary(model_name: str, passes: list[tuple[list[float], dict[str, Any]]]) -> dict[str, Any]:
    """The floor over every pass, and each pass on its own (with the CPU use and load around it)."""
    return {
        "model": model_name,
        "questions": len(passes[0][0]),
        "latency_ms": percentiles([ms for times, _ in passes for ms in times]),
        "passes": [{"latency_ms": percentiles(times), **conditions} for times, conditions in passes],
    }


# --- the run ---------------------------------------------------------------------------------


def phase_plan(requests: int, throughput_requests: int) -> list[tuple[str, str, int, int]]:
    """(name, route, concurrency, questions) in the order they run."""
    return [
        ("search@1", "/v1/search", 1, requests),
        ("ask@1", "/v1/ask", 1, requests),
        ("search@8", "/v1/search", 8, requests),
        ("ask@8", "/v1/ask", 8, requests),
        ("ask@16", "/v1/ask", 16, throughput_requests),
    ]


def run(args: argparse.Namespace, source: Path, store: Path | None) -> dict[str, Any]:
    from indexer.config import IndexSettings

    load_start = load_average()
    measured_code = code_state("service", "indexer")  # now: the server about to start imports this code
    docs = read_corpus(source)
    plan = phase_plan(args.requests, args.throughput_requests)
    questions = make_questions(docs, WARMUP_QUESTIONS + sum(n for *_, n in plan), args.seed)
    warmup, rest = questions[:WARMUP_QUESTIONS], questions[WARMUP_QUESTIONS:]
    sets: list[list[str]] = []
    for *_, n in plan:
        sets.append(rest[:n])
        rest = rest[n:]

    build = build_store([source], store) if store is not None else None
    model_name = IndexSettings().model  # the model the server loads (RAGQA_MODEL or the bundled one)

    with server_to_measure(args.url, store) as server:
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as client:
            ready = client.get("/readyz")
            if ready.status_code != 200:
                raise SystemExit(f"{server.url}/readyz answered {ready.status_code}: {ready.text[:200]}")
            index_version = ready.json().get("index_version")
            memory_before = memory_mib(server.pid)
            server_malloc = malloc(server.pid) if server.pid is not None else None
            print(f"warming up with {len(warmup)} questions ...", file=sys.stderr, flush=True)
            warm_statuses: Counter[int] = Counter()
            for i, question in enumerate(warmup):  # alternately search and ask
                route = ("/v1/search", "/v1/ask")[i % 2]
                warm_statuses[client.post(route, json=body_for(route, question)).status_code] += 1
        gauges = scrape(server.url)

        # The floor: the search@1 questions encoded bare in this process, once right before the
        # concurrency-1 phases and once right after them, so that a change of the machine's load
        # in between shows (the figure is taken over both passes).
        from indexer.embedding import load_embedder
        from indexer.onnx_encoder import load_onnx_encoder

        embedder = load_embedder(model_name)
        model = embedder.model
        floor_pass(model, warmup)  # warm up this process's model
        floor_passes: list[tuple[list[float], dict[str, Any]]] = []
        phases = []
        for (name, route, concurrency, _), batch in zip(plan, sets, strict=True):
            if name in ("search@1", "search@8"):
                print(
                    f"floor: bare model.encode of {len(sets[0])} questions ...", file=sys.stderr, flush=True
                )
                before = load_average()
                meter = CpuMeter(server.pid).start()
                times = floor_pass(model, sets[0])
                conditions = {
                    **meter.stop(),
                    "load_average_1min": {"before": before, "after": load_average()},
                }
                floor_passes.append((times, conditions))
            phases.append(run_phase(server, name, route, batch, concurrency, args.phase_seconds))
        floor = floor_summary(model_name, floor_passes)
        print(f"ONNX Runtime encode of {len(sets[0])} questions ...", file=sys.stderr, flush=True)
        onnx = load_onnx_encoder(embedder)
        onnx_pass(onnx, warmup)
        onnx_encode = percentiles(onnx_pass(onnx, sets[0]))
        http_round_trip = percentiles(http_pass(server.url, len(sets[0])))
        dense = percentiles(dense_pass(store, model_name, onnx, sets[0])) if store is not None else None
        memory_after = memory_mib(server.pid)
    reading = machine()  # torch is loaded by now: its threads in this process are part of it

    summaries = [p.summary() for p in phases]
    by_name = {s["phase"]: s for s in summaries}
    floor_p50 = floor["latency_ms"]["p50"]
    search_p50 = by_name["search@1"]["latency_ms"]["p50"]
    ask_p50 = by_name["ask@1"]["latency_ms"]["p50"]
    asks_per_s = by_name["ask@16"]["requests_per_s"]
    # What no search can go below here: the question's encode (the ONNX one), the exact dense search
    # of its vector and one HTTP round trip, each measured in this run, before BM25, fusion and the
    # response
    parts = [onnx_encode["p50"], http_round_trip["p50"], dense["p50"] if dense is not None else None]
    bound = sum(p for p in parts if p is not None) if all(p is not None for p in parts) else None
    ratios = {
        "search_over_floor": _ratio(search_p50, floor_p50),
        "lower_bound_over_floor": _ratio(bound, floor_p50),
        "ask_over_search": _ratio(ask_p50, search_p50),
        "asks_per_s_at_16": asks_per_s,
    }
    goals_met = {
        "search_over_floor": _le(ratios["search_over_floor"], GOALS["search_over_floor"]),
        "ask_over_search": _le(ratios["ask_over_search"], GOALS["ask_over_search"]),
        "asks_per_s_at_16": asks_per_s is not None and asks_per_s >= GOALS["asks_per_s_at_16"],
    }
    others = [("floor", p["others_cores"]) for p in floor["passes"]]
    others += [(s["phase"], s["other_processes_cores"]) for s in summaries]
    disturbed = [f"{name}: {cores:.2f} cores" for name, cores in others if cores and cores > DISTURBED_CORES]
    non_200 = sum(s["non_200"] for s in summaries) + sum(
        n for code, n in warm_statuses.items() if code != 200
    )
    return {
        "created": now(),
        "corpus": str(args.corpus),
        "limit": args.limit,
        "seed": args.seed,
        "store": str(store) if store is not None else None,
        "store_build": build,
        "url": server.url if args.url else None,
        "server": {
            "command": server.command,
            "pid": server.pid,
            "ready_seconds": server.ready_seconds,
            "index_version": index_version,
            "documents": gauges.get(("ragqa_index_documents", ())),
            "chunks": gauges.get(("ragqa_index_chunks", ())),
            "memory_mib": {"before": memory_before, "after": memory_after},
            "malloc": server_malloc,
            "ragqa_env": {k: v for k, v in os.environ.items() if k.startswith("RAGQA_")},
        },
        "environment": {
            **reading,
            "load_average_1min": {"start": load_start, "end": load_average()},
            "code": measured_code,
        },
        "questions": {
            "warmup": len(warmup),
            "per_phase": {name: n for name, _, _, n in plan},
            "examples": warmup[:5],
        },
        "warmup_statuses": {str(k): v for k, v in warm_statuses.items()},
        "floor": floor,
        "onnx_encode_ms": onnx_encode,
        "http_round_trip_ms": http_round_trip,
        "dense_search_ms": dense,
        "phases": summaries,
        "ratios": ratios,
        "goals": GOALS,
        "goals_met": goals_met,
        "disturbed_by_other_processes": disturbed,
        "non_200_total": non_200,
        "complete": not any(s["timed_out"] for s in summaries),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _le(value: float | None, goal: float) -> bool:
    return value is not None and value <= goal


# --- reporting -------------------------------------------------------------------------------


def others_cores(result: dict[str, Any]) -> list[float | None]:
    return [p["others_cores"] for p in result["floor"]["passes"]] + [
        p["other_processes_cores"] for p in result["phases"]
    ]


def code_files(code: dict[str, Any]) -> list[str]:
    return [line[3:] for line in code["changed"]]


def _f(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any], command: str) -> str:
    server, environment, floor = result["server"], result["environment"], result["floor"]
    onnx = result["onnx_encode_ms"]
    memory = server["memory_mib"]
    corpus = Path(result["corpus"]).name + (f" (first {result['limit']})" if result["limit"] else "")
    size = ""
    if server["documents"] is not None:
        size = f" — {server['documents']:,.0f} documents, {server['chunks']:,.0f} chunks"
    load = environment["load_average_1min"]
    code = environment["code"]
    rows = [
        ("corpus served", f"{corpus}{size}, index version {server['index_version']}"),
        (
            "server",
            f"pid {server['pid']}" + (f", ready in {server['ready_seconds']} s" if server["command"] else ""),
        ),
        ("machine", machine_summary(environment)),
        ("server malloc", server["malloc"] or "–"),
        (
            "CPUs / 1-min load average at start / end",
            f"{environment['cpus']} / {load['start']} / {load['end']}",
        ),
        (
            "code measured",
            f"commit {code['commit']}"
            + (f", uncommitted changes to {', '.join(changed)}" if (changed := code_files(code)) else ""),
        ),
        (
            f"floor: bare model.encode([q]), one at a time, in the bench process ({floor['questions']}"
            " questions of search@1, before and after the concurrency-1 phases)",
            f"p50 **{_f(floor['latency_ms']['p50'], 2)} ms**, p95 {_f(floor['latency_ms']['p95'], 2)} ms"
            " (p50 per pass: " + " / ".join(_f(p["latency_ms"]["p50"], 2) for p in floor["passes"]) + " ms)",
        ),
        (
            "ONNX Runtime encode of the same questions, one at a time, in the bench process (the service's"
            " question encoder)",
            f"p50 **{_f(onnx['p50'], 2)} ms**, p95 {_f(onnx['p95'], 2)} ms"
            f" ({_f(_ratio(onnx['p50'], floor['latency_ms']['p50']), 2)} of the floor)",
        ),
        (
            f"other processes' CPU use (a phase above {DISTURBED_CORES} cores makes its figures unreliable)",
            "**DISTURBED**: " + "; ".join(result["disturbed_by_other_processes"])
            if result["disturbed_by_other_processes"]
            else "none above the limit: max "
            + _f(max((c for c in others_cores(result) if c is not None), default=None), 2)
            + " cores",
        ),
        (
            "server RSS before / after (peak)",
            f"{_f(memory['before']['rss'])} / {_f(memory['after']['rss'])} MiB"
            f" ({_f(memory['after']['peak'])} MiB)",
        ),
        ("non-200 responses (must be 0)", f"**{result['non_200_total']}**"),
    ]
    lines = ["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]

    lines += [
        "",
        "| phase | requests | non-200 | p50 ms | p95 ms | req/s | server CPU ms/req | bench CPU ms/req "
        "| other processes (cores) | load before → after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["phases"]:
        count = f"{p['completed']}" + ("" if not p["timed_out"] else f" of {p['planned']} (time limit)")
        latency = p["latency_ms"]
        phase_load = p["load_average_1min"]
        lines.append(
            f"| {p['route']} @ {p['concurrency']} | {count} | {p['non_200']} | {_f(latency['p50'])} "
            f"| {_f(latency['p95'])} | {_f(p['requests_per_s'])} | {_f(p['server_cpu_ms_per_request'])} "
            f"| {_f(p['client_cpu_ms_per_request'])} | {_f(p['other_processes_cores'], 2)} "
            f"| {phase_load['before']} → {phase_load['after']} |"
        )

    lines += [
        "",
        "| phase | client mean ms | server route mean ms | encode | retrieve | answer "
        "| ask timings_ms p50: encode / retrieve / answer / outside them |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in result["phases"]:
        means = p["server_metrics_mean_ms"]
        timings = p["server_timings_ms"]
        p50s = "–"
        if timings:
            p50s = " / ".join(
                _f(timings.get(stage, {}).get("p50"), 2)
                for stage in ("encode", "retrieve", "answer", "outside_stages")
            )
        lines.append(
            f"| {p['route']} @ {p['concurrency']} | {_f(p['latency_ms']['mean'], 2)} "
            f"| {_f(means['route'], 2)} "
            f"| {_f(means['encode'], 2)} | {_f(means['retrieve'], 2)} | {_f(means['answer'], 2)} | {p50s} |"
        )

    ratios, goals, met = result["ratios"], result["goals"], result["goals_met"]
    caveat = " (disturbed run)" if result["disturbed_by_other_processes"] else ""

    def verdict(name: str) -> str:
        return ("met" if met[name] else "NOT met") + caveat

    lines += [
        "",
        "| goal (issue 13) | measured | target | |",
        "|---|---:|---:|---|",
        f"| search p50 / floor p50 (concurrency 1) | **{_f(ratios['search_over_floor'], 2)}** "
        f"| ≤ {goals['search_over_floor']} | {verdict('search_over_floor')} |",
        f"| its lower bound here: (ONNX encode p50 + exact dense search p50 "
        f"{_f((result['dense_search_ms'] or {}).get('p50'), 2)} ms + GET /healthz round trip p50 "
        f"{_f(result['http_round_trip_ms']['p50'], 2)} ms) / floor | "
        f"{_f(ratios['lower_bound_over_floor'], 2)} | | |",
        f"| ask p50 / search p50 (concurrency 1) | **{_f(ratios['ask_over_search'], 2)}** "
        f"| ≤ {goals['ask_over_search']} | {verdict('ask_over_search')} |",
        f"| asks/s at concurrency 16 | **{_f(ratios['asks_per_s_at_16'])}** "
        f"| ≥ {goals['asks_per_s_at_16']:.0f} | {verdict('asks_per_s_at_16')} |",
        "",
        "Means per stage come from /metrics (histogram sums and counts read before and after each phase); "
        '`encode` includes the wait for the shared model call. "outside them" is the client\'s latency '
        "minus the ask's own timings_ms: HTTP, validation, serialisation and event-loop queueing.",
        "",
        f"`{command}`",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serve_latency",
        description="Latency of /v1/search and /v1/ask over real HTTP against the bare model encode.",
    )
    add_corpus_option(parser, DEFAULT_CORPUS)
    parser.add_argument(
        "--store",
        type=Path,
        help=f"store folder, built or updated in process (default {DEFAULT_STORE}; with --limit N, its own)",
    )
    parser.add_argument("--limit", type=int, help="index only the first N documents (for a quick check)")
    parser.add_argument("--url", help="measure a server already running on 127.0.0.1 (no store, no start)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the question generator (default 0)")
    parser.add_argument(
        "--requests", type=int, default=200, help="questions per concurrency-1 and -8 phase (default 200)"
    )
    parser.add_argument(
        "--throughput-requests", type=int, default=400, help="asks at concurrency 16 (default 400)"
    )
    parser.add_argument(
        "--phase-seconds", type=float, default=180.0, help="time limit of each phase (default 180)"
    )
    add_results_option(parser)
    args = parser.parse_args(argv)
    require_data(parser, args.corpus, "--corpus")
    for name in ("limit", "requests", "throughput_requests"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.url:
        args.url = args.url.rstrip("/")
        if urlsplit(args.url).hostname not in LOOPBACK:
            parser.error("--url must point at this machine (127.0.0.1 or localhost)")
        if args.store:
            parser.error("--url and --store exclude each other: the running server has its store")

    command = command_line("bench.serve_latency", argv)
    offline()
    corpus = args.corpus.resolve()
    args.corpus = corpus
    default_store = (
        DEFAULT_STORE if not args.limit else DEFAULT_STORE.with_name(f"{corpus.stem}-first{args.limit}-store")
    )
    store = None if args.url else (args.store.resolve() if args.store else REPO / default_store)
    if args.limit:
        folder = store.parent if store is not None else REPO / DEFAULT_STORE.parent
        source = limited_corpus(corpus, args.limit, folder)
    else:
        source = corpus
    result = run(args, source, store)
    result["command"] = command
    publish("serve_latency", result, markdown(result, command), args.results)
    return 0 if result["non_200_total"] == 0 and result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
