"""Load: N concurrent clients ask varied questions for T seconds over real HTTP, and halfway through
a re-index publishes a new version, which the service hot-reloads under load.

The store holds the 547 region-related Wikipedia leads of ../shared/data/corpus/caucasus-wiki-topical.jsonl
plus corpus/ (the seed article); the re-index adds a document. The benchmark prints throughput,
p50/p95/p99 latency, the errors (any non-200 or transport failure: must be 0), the index versions
that answered, and the service's RSS before and after (it must stay flat).

    .venv/bin/python -m bench.load [--clients 16] [--seconds 60] [--warmup 15] [--results DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.harness import (
    REPO,
    add_results_option,
    command_line,
    index_command,
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

DATA = shared_data("corpus/caucasus-wiki-topical.jsonl")
QUESTIONS = shared_data("corpus/wiki-leads-10k.jsonl")
NEW_DOCUMENT = (
    "# Lake Sevan\n\nLake Sevan is the largest body of water in Armenia and the Caucasus region. "
    "It lies at an altitude of about 1,900 metres in Gegharkunik Province.\n"
)


async def client_loop(
    client: httpx.AsyncClient, questions: Iterator[str], until: float, out: list[dict[str, Any]]
) -> None:
    for question in questions:  # shared by the clients: no question is asked twice
        if time.monotonic() >= until:
            return
        started = time.perf_counter()
        try:
            response = await client.post("/v1/ask", json={"question": question})
            ok = response.status_code == 200
            version = response.json().get("index_version") if ok else None
            status: int | str = response.status_code
        except httpx.HTTPError as exc:
            ok, version, status = False, None, type(exc).__name__
        out.append(
            {"ms": (time.perf_counter() - started) * 1000, "ok": ok, "status": status, "version": version}
        )


async def _idle(_after: float) -> None:
    """No re-index during the warm-up."""


def unique(questions: list[str]) -> Iterator[str]:
    """The questions, then again with a round number in front of each, and so on: never the same text
    twice, so that every ask costs a model call (the service caches the vectors of recent questions)."""
    yield from questions
    for round_ in itertools.count(2):
        for question in questions:
            yield f"({round_}) {question}"


async def load(
    url: str, questions: list[str], clients: int, seconds: float, reindex: Any, pid: int
) -> tuple[list[dict[str, Any]], list[float | None]]:
    """The samples, and the server's RSS (MiB) every tenth of the run."""
    samples: list[dict[str, Any]] = []
    memory: list[float | None] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    shared = unique(questions)

    async def watch_memory() -> None:
        for _ in range(10):
            await asyncio.sleep(seconds / 10)
            memory.append(memory_mib(pid)["rss"])

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        until = time.monotonic() + seconds
        loops = [client_loop(client, shared, until, samples) for _ in range(clients)]
        await asyncio.gather(*loops, reindex(seconds / 2), watch_memory())
    return samples, memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="seconds of the same load before measuring"
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--questions", type=Path, default=QUESTIONS, help="a corpus to make questions about")
    parser.add_argument("--question-count", type=int, default=9000)
    add_results_option(parser)
    args = parser.parse_args(argv)
    require_data(parser, args.data, "--data")
    require_data(parser, args.questions, "--questions")
    offline()
    reading = machine()

    # Questions about the 10,033 leads of wiki-leads-10k, none repeated (the service caches question
    # vectors): the ones about the region are answered, the others mostly abstain, all do the work.
    questions = make_questions(read_corpus(args.questions), args.question_count, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        corpus = root / "corpus"
        shutil.copytree(REPO / "corpus", corpus)
        shutil.copy(args.data, corpus / args.data.name)
        store = root / "store"
        first = index_command([corpus], store)
        with running_service(store, log_level="WARNING") as service:  # its log in a temporary file
            # Warm-up: the same load for `--warmup` seconds, so that "before" is the memory of a
            # server that has already seen concurrent batches of every size.
            warmup, _ = asyncio.run(
                load(service.url, questions[::-1], args.clients, args.warmup, _idle, service.pid)
            )
            memory_before = memory_mib(service.pid)
            metrics_before = scrape(service.url)
            reindexed: dict[str, Any] = {}

            async def reindex(after: float) -> None:
                await asyncio.sleep(after)
                (corpus / "lake-sevan.md").write_text(NEW_DOCUMENT, encoding="utf-8")
                started = time.monotonic()
                reindexed.update(await asyncio.to_thread(index_command, [corpus], store))
                reindexed["published_after_s"] = round(after + time.monotonic() - started, 1)

            started = time.monotonic()
            samples, memory = asyncio.run(
                load(service.url, questions, args.clients, args.seconds, reindex, service.pid)
            )
            elapsed = time.monotonic() - started
            memory_after = memory_mib(service.pid)
            stage_means = stage_means_ms(metrics_before, scrape(service.url), "/v1/ask")
            server_malloc = malloc(service.pid)
    latencies = [s["ms"] for s in samples if s["ok"]]
    errors = [s for s in samples if not s["ok"]]
    versions: dict[str, int] = {}
    for s in samples:
        if s["version"]:
            versions[s["version"]] = versions.get(s["version"], 0) + 1
    result = {
        "created": now(),
        "command": command_line("bench.load", argv),
        "machine": reading,
        "corpus": f"corpus/ + {args.data.name} ({first['documents']} documents, {first['chunks']} chunks)",
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": len(samples),
        "throughput_per_s": round(len(samples) / elapsed, 1),
        "latency_ms": percentiles(latencies),
        "server_metrics_mean_ms": stage_means,
        "errors": len(errors),
        "error_statuses": sorted({str(e["status"]) for e in errors}),
        "versions_answering": versions,
        "reindex": reindexed,
        "warmup": {"seconds": args.warmup, "asks": len(warmup), "errors": sum(not w["ok"] for w in warmup)},
        "rss_mib_before": memory_before,
        "rss_mib_after": memory_after,
        "rss_mib_during": memory,
        "server_malloc": server_malloc,
    }
    publish("load", result, markdown(result), args.results)
    return 0 if not errors else 1


def markdown(result: dict[str, Any]) -> str:
    latency = result["latency_ms"]
    means = result["server_metrics_mean_ms"]
    rows = [
        ("machine", machine_summary(result["machine"])),
        ("corpus", result["corpus"]),
        ("clients / seconds", f"{result['clients']} / {result['seconds']}"),
        ("asks / throughput", f"{result['requests']} / {result['throughput_per_s']} per s"),
        ("latency p50 / p95 / p99", f"{latency.get('p50')} / {latency.get('p95')} / {latency.get('p99')} ms"),
        (
            "server mean ms (/metrics): ask route / encode / retrieve / answer",
            " / ".join(str(means[key]) for key in ("route", "encode", "retrieve", "answer")),
        ),
        ("errors (must be 0)", f"**{result['errors']}** {' '.join(result['error_statuses'])}"),
        ("re-index under load", json.dumps(result["reindex"])),
        ("index versions that answered (asks each)", json.dumps(result["versions_answering"])),
        ("warm-up before measuring", json.dumps(result["warmup"])),
        ("server RSS before / after", f"{result['rss_mib_before']} / {result['rss_mib_after']}"),
        ("server malloc", result["server_malloc"]),
        ("server RSS every tenth of the run (MiB)", " ".join(str(m) for m in result["rss_mib_during"])),
    ]
    lines = ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    lines += ["", f"`{result['command']}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
