"""Hot reload across processes, on the session's real server: while two threads keep asking and
searching, the test process publishes new versions of the server's store, and the server swaps each
in within seconds without failing a single request. At the end the original documents are published
again, so the other tests of the session's server see what they expect."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import Server, index, wait_until

pytestmark = pytest.mark.service

RELOAD_WITHIN = 10.0  # seconds; the server polls CURRENT every second by default


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


def test_hot_reload_fails_no_request(server: Server, sources: list[Path], tmp_path: Path) -> None:
    client = server.client
    first = client.get("/readyz").json()["index_version"]
    added = tmp_path / "added"
    added.mkdir()
    documents = [
        (
            "quokka.md",
            "# Quokka\n\nThe quokka is a small wallaby that lives on Rottnest Island near Perth.\n",
        ),
        ("axolotl.md", "# Axolotl\n\nThe axolotl is a salamander that keeps its gills and lives in lakes.\n"),
    ]
    published: list[str] = []
    try:
        with Traffic(server.base_url) as traffic:
            time.sleep(0.5)
            for name, text in documents:
                (added / name).write_text(text, encoding="utf-8")
                report = index([*sources, added], Path(server.store))
                assert report.published and report.version not in published + [first]
                published.append(report.version)
                doc_id, word = name, name.removesuffix(".md")

                def found(doc_id: str = doc_id, word: str = word) -> bool:
                    return searchable(client, doc_id, word)

                wait_until(found, RELOAD_WITHIN, f"{word} searchable")
                assert client.get("/readyz").json()["index_version"] == report.version
            time.sleep(0.5)
    finally:  # the session's documents again, whatever happened
        restored = index(sources, Path(server.store))
        wait_until(
            lambda: client.get("/readyz").json()["index_version"] == restored.version,
            RELOAD_WITHIN,
            "the session's documents served again",
        )

    assert traffic.sent < traffic.limit, "the loop ran out before the reloads ended"
    assert not traffic.failures, traffic.failures[:5]
    assert set(traffic.statuses) == {200}, traffic.statuses
    assert traffic.versions == {first, *published}, "requests were served by every version in turn"
    print(f"{traffic.sent} requests across {len(published)} reloads: {dict(traffic.statuses)}")
