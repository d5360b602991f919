"""Readiness and hot reload, on a server of its own that starts on an EMPTY store folder: 503 until an
index exists, then the versions that the indexer publishes while it runs, with no failed request."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import CORPUS, Server, index, start_server, stop_server

RELOAD_WITHIN = 10.0  # seconds; the server polls CURRENT every second by default


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reload")
    shutil.copytree(CORPUS, root / "corpus")
    (root / "store").mkdir()
    return root


@pytest.fixture(scope="module")
def fresh_server(workdir: Path) -> Iterator[Server]:
    running = start_server(workdir / "store", workdir / "server.log")
    try:
        yield running
    finally:
        stop_server(running)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def ensure_indexed(server: Server, workdir: Path) -> None:
    if server.client.get("/readyz").status_code != 200:
        index([workdir / "corpus"], workdir / "store")
        server.wait_for("/readyz", timeout=RELOAD_WITHIN)


def test_not_ready_without_an_index_then_ready_once_indexed(fresh_server: Server, workdir: Path) -> None:
    client = fresh_server.client
    assert client.get("/healthz").status_code == 200
    for method, path, body in (
        ("GET", "/readyz", None),
        ("POST", "/v1/ask", {"question": "Why did Armenia freeze CSTO membership?"}),
        ("POST", "/v1/ask", {"question": "Why did Armenia freeze CSTO membership?", "stream": True}),
        ("POST", "/v1/search", {"query": "Armenia"}),
        ("GET", "/v1/documents", None),
        ("GET", "/v1/documents/anything", None),
    ):
        response = client.request(method, path, json=body)
        assert response.status_code == 503, f"{path}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"], path
    # invalid input is still invalid input, whether or not an index is loaded
    assert client.post("/v1/ask", json={"question": ""}).status_code == 422
    assert client.get("/metrics").status_code == 200

    report = index([workdir / "corpus"], workdir / "store")  # while the server runs
    assert report.published
    waited = wait_until(
        lambda: client.get("/readyz").status_code == 200, RELOAD_WITHIN, "ready after indexing"
    )
    assert client.get("/readyz").json()["index_version"] == report.version
    result = client.post("/v1/ask", json={"question": "Why did Armenia freeze CSTO membership?"})
    assert result.status_code == 200 and result.json()["index_version"] == report.version
    print(f"ready {waited:.1f} s after the index was published")


class Traffic:
    """Searches and asks in a loop from two threads until stopped (at most `limit` requests in all)."""

    QUERIES = (
        "Why did Armenia freeze CSTO membership?",
        "quokka island",
        "What did Stoltenberg say in Baku?",
    )

    def __init__(self, base_url: str, limit: int = 2000) -> None:
        self.base_url = base_url
        self.limit = limit
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(2)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _take(self) -> bool:
        with self._lock:
            if self.sent >= self.limit:
                return False
            self.sent += 1
            return True

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            n = worker
            while not self._stop.is_set() and self._take():
                query = self.QUERIES[n % len(self.QUERIES)]
                path, body = ("/v1/ask", {"question": query}) if n % 2 else ("/v1/search", {"query": query})
                n += 1
                try:
                    response = client.post(path, json=body)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(f"{path}: {exc!r}")
                    continue
                with self._lock:
                    self.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        self.versions.add(response.json()["index_version"])
                    else:
                        self.failures.append(f"{path}: {response.status_code} {response.text[:200]}")
                time.sleep(0.01)


def searchable(client: httpx.Client, doc_id: str, query: str) -> bool:
    results = client.post("/v1/search", json={"query": query, "top_k": 3}).json()["results"]
    return any(r["doc_id"] == doc_id for r in results)


def test_hot_reload_fails_no_request(fresh_server: Server, workdir: Path) -> None:
    ensure_indexed(fresh_server, workdir)
    client = fresh_server.client
    first = client.get("/readyz").json()["index_version"]
    corpus = workdir / "corpus"
    added = [
        (
            "quokka.md",
            "# Quokka\n\nThe quokka is a small wallaby that lives on Rottnest Island near Perth.\n",
        ),
        ("axolotl.md", "# Axolotl\n\nThe axolotl is a salamander that keeps its gills and lives in lakes.\n"),
    ]
    published: list[str] = []
    with Traffic(fresh_server.base_url) as traffic:
        time.sleep(0.5)
        for name, text in added:
            (corpus / name).write_text(text, encoding="utf-8")
            report = index([corpus], workdir / "store")
            assert report.published and report.version not in published + [first]
            published.append(report.version)
            word = name.removesuffix(".md")
            wait_until(
                lambda word=word: searchable(client, f"{word}.md", word), RELOAD_WITHIN, f"{word} searchable"
            )
            assert client.get("/readyz").json()["index_version"] == report.version
        time.sleep(0.5)

    assert traffic.sent < traffic.limit, "the loop ran out before the reloads ended"
    assert not traffic.failures, traffic.failures[:5]
    assert set(traffic.statuses) == {200}, traffic.statuses
    assert traffic.versions == {first, *published}, "requests were served by every version in turn"
    print(f"{traffic.sent} requests across {len(published)} reloads: {dict(traffic.statuses)}")
