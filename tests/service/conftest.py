"""Service fixtures: a real store built with the real bundled model, the real server (`python -m
service.cli`) started as a subprocess on a free port of 127.0.0.1, and httpx talking to it over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from indexer.pipeline import IndexReport

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "corpus"
STOLTENBERG = "stoltenberg-in-the-south-caucasus.md"
ODD_ID = "wiki:A/B#1"  # a jsonl `_id` with '/' and '#': must travel URL-encoded
START_TIMEOUT = 120.0  # loading the model on a busy two-core machine can take a while


@dataclass
class Server:
    """A running `ragqa-serve` process and a client bound to it."""

    process: subprocess.Popen[bytes]
    base_url: str
    store: Path
    log: Path
    client: httpx.Client

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(self, path: str, status: int = 200, timeout: float = START_TIMEOUT) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: str = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                response = self.client.get(path, timeout=5)
                if response.status_code == status:
                    return response
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.base_url}{path} not {status} after {timeout:.0f} s ({last}):\n{self.log_tail()}"
        )

    def statuses(self) -> dict[tuple[str, str], float]:
        """(route, status) → count, from the server's own /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        counts: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for sample in family.samples:
                if sample.name == "ragqa_http_requests_total":
                    key = (sample.labels["route"], sample.labels["status"])
                    counts[key] = counts.get(key, 0) + sample.value
        return counts


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(**settings: str) -> dict[str, str]:
    """The test process's environment without any RAGQA_* setting, offline, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update({f"RAGQA_{k.upper()}": v for k, v in settings.items()})
    return env


def start_server(store: Path, log: Path, **settings: str) -> Server:
    """`python -m service.cli --store STORE --host 127.0.0.1 --port N`; returns once /healthz answers."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "--store",
                str(store),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=server_env(**settings),
        )
    server = Server(process, base_url, store, log, httpx.Client(base_url=base_url, timeout=30))
    try:
        server.wait_for("/healthz")
    except BaseException:
        server.client.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        raise
    return server


def stop_server(server: Server) -> None:
    """SIGTERM, and check that uvicorn shut down gracefully (lifespan closed, process finished). Uvicorn
    re-raises the signal it handled, so a clean exit is -SIGTERM (or 0). SIGKILL if it hangs."""
    server.client.close()
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)
            raise AssertionError(f"server ignored SIGTERM for 20 s:\n{server.log_tail()}") from None
    code = server.process.returncode
    clean = code in (0, -signal.SIGTERM) and "Application shutdown complete" in server.log_tail()
    assert clean, f"server did not shut down cleanly (exit {code}):\n{server.log_tail()}"


def write_extra_documents(folder: Path) -> Path:
    """Small documents beside the seed article: one whose id holds '/' and '#', and one about another
    Georgia (the U.S. state), so that a follow-up about Georgia has to use the conversation."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wiki.jsonl").write_text(
        '{"_id": "wiki:A/B#1", "title": "Honey bee", "text": "The western honey bee lives in colonies of '
        "tens of thousands of workers. Worker bees build combs of wax and store honey made from flower "
        'nectar."}\n',
        encoding="utf-8",
    )
    (folder / "georgia.md").write_text(
        "# Georgia (U.S. state)\n\nGeorgia is a state in the southeastern United States. Its capital and "
        "largest city is Atlanta. Georgia is known for peaches, peanuts and pecans, and the port of Savannah "
        "is one of the busiest on the Atlantic coast.\n",
        encoding="utf-8",
    )
    return folder


def index(paths: list[Path], store: Path) -> IndexReport:
    """Index in this process with the real model (loaded once per process, then cached)."""
    from indexer.config import IndexSettings
    from indexer.pipeline import run_index

    return run_index(paths, IndexSettings(store=store))


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """corpus/ plus the extra documents, indexed into a temporary store with the bundled model."""
    root = tmp_path_factory.mktemp("service-store")
    extra = write_extra_documents(root / "extra")
    report = index([CORPUS, extra], root / "store")
    assert report.published and report.documents == 3
    return root / "store"


@pytest.fixture(scope="session")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for the session, over the shared store. At the end: no request of any test
    got a 500, and the process shuts down cleanly."""
    running = start_server(store, tmp_path_factory.mktemp("server-log") / "server.log")
    try:
        running.wait_for("/readyz")
        yield running
        errors = {key: n for key, n in running.statuses().items() if key[1].startswith("5")}
        assert not errors, f"requests answered with 5xx: {errors}"
    finally:
        stop_server(running)


@pytest.fixture(scope="session")
def client(server: Server) -> httpx.Client:
    return server.client
