"""The service on a Milvus store, every part a process of its own, as a deployment runs them: a
`milvus-lite server` (the engine, over gRPC), `ragqa-index` runs that publish versions into it, and
`ragqa-serve` reading it. The same answers and exact citations as the local store; hot reload by alias
with no failed request; an indexer killed mid-build leaves the alias where it was; the engine paused
(unreachable) or killed makes the service not ready, with 503s and no hang, until it answers again.
Skipped without the optional extra `milvus`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.processes import LiteServer, index_command
from tests.service.conftest import REPO, Server, server_env, start_server, stop_server, wait_until
from tests.service.test_reload import RELOAD_WITHIN, Traffic, searchable

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

pytestmark = pytest.mark.slow  # processes of their own that load the model

QUESTION = "Why did Armenia freeze CSTO membership?"
TIMEOUT = 2.0  # the store setting's ?timeout=: how long a call may take before the store is unavailable


@dataclass
class Deployment:
    engine: LiteServer
    store: str  # the store setting, milvus://127.0.0.1:PORT/ragqa?timeout=...
    work: Path  # the indexer's local store
    service: Server

    def index(self, *paths: Path) -> dict[str, Any]:
        return index_command(paths, self.store, server_env(work_store=str(self.work)))

    def collections(self) -> list[str]:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=self.engine.uri)
        try:
            return sorted(client.list_collections())
        finally:
            client.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, sources: list[Path]) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("milvus-deployment")
    with LiteServer(root / "engine") as engine:
        store = f"milvus://127.0.0.1:{engine.port}/ragqa?timeout={TIMEOUT}"
        report = index_command(sources, store, server_env(work_store=str(root / "work")))
        assert report["published"] and report["exported"], report
        service = start_server(store, root / "service.log", ready_path="/readyz", work_store=str(root / "w2"))
        try:
            yield Deployment(engine, store, root / "work", service)
        finally:
            stop_server(service)


def answer(client: httpx.Client) -> dict[str, Any]:
    response = client.post("/v1/ask", json={"question": QUESTION})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_same_answer_and_exact_citations_as_the_local_store(
    deployment: Deployment, server: Server
) -> None:
    on_milvus, local = answer(deployment.service.client), answer(server.client)
    assert on_milvus["answer"] == local["answer"] and not on_milvus["abstained"]
    assert "Collective Security Treaty Organization" in on_milvus["answer"]
    cited = [(c["doc_id"], c["start"], c["end"], c["excerpt"]) for c in on_milvus["citations"]]
    assert cited == [(c["doc_id"], c["start"], c["end"], c["excerpt"]) for c in local["citations"]]
    for doc_id, start, end, excerpt in cited:  # exact: the document's own text at the cited span
        document = deployment.service.client.get(f"/v1/documents/{doc_id}").json()
        assert document["text"][start:end] == excerpt
    listed = deployment.service.client.get("/v1/documents").json()
    assert listed["total"] == server.client.get("/v1/documents").json()["total"]


def test_a_new_version_is_served_by_alias_with_no_failed_request(
    deployment: Deployment, sources: list[Path], tmp_path: Path
) -> None:
    client = deployment.service.client
    first = client.get("/readyz").json()["index_version"]
    added = tmp_path / "added"
    added.mkdir()
    (added / "quokka.md").write_text(
        "# Quokka\n\nThe quokka is a small wallaby that lives on Rottnest Island near Perth.\n",
        encoding="utf-8",
    )
    with Traffic(deployment.service.base_url, limit=1000) as traffic:
        time.sleep(0.5)
        report = deployment.index(*sources, added)  # another process, as a deployment's indexer
        assert report["published"] and report["exported"] and report["version"] != first
        wait_until(lambda: searchable(client, "quokka.md", "quokka"), RELOAD_WITHIN, "quokka searchable")
        assert client.get("/readyz").json()["index_version"] == report["version"]
        time.sleep(0.5)
    assert not traffic.failures, traffic.failures[:5]
    assert set(traffic.statuses) == {200} and traffic.versions == {first, report["version"]}

    # the version before stays for readers still on it; one more publish drops it
    versions = {name.split("_")[1] for name in deployment.collections()}
    assert versions == {first, report["version"]}
    third = deployment.index(*sources)
    assert {name.split("_")[1] for name in deployment.collections()} == {report["version"], third["version"]}
    wait_until(lambda: not searchable(client, "quokka.md", "quokka"), RELOAD_WITHIN, "quokka gone")


KILLED_PUBLISH = """
import sys, time
from indexer import milvus_store as ms
location = ms.parse_location(sys.argv[1])
from tests.indexer.test_store_format import synthetic
data = synthetic({"k0": "A version that is never finished. It has two sentences."})
def insert(name, rows):
    ms.insert_rows(location.guarded_client(), name, rows)
    print("inserted", name, flush=True)
    time.sleep(3600)  # killed here, its chunks written, nothing else
ms.publish_version(location, data, "20990101T000000000000Z", insert)
"""


def test_an_indexer_killed_mid_build_leaves_the_alias_where_it_was(
    deployment: Deployment, sources: list[Path], tmp_path: Path
) -> None:
    client = deployment.service.client
    live = client.get("/readyz").json()["index_version"]
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_PUBLISH, deployment.store],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env=server_env(),
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("inserted ragqa_20990101T000000000000Z_chunks")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert "ragqa_20990101T000000000000Z_chunks" in deployment.collections()  # half-written, left behind
    time.sleep(1.5)  # a reload check or more
    assert client.get("/readyz").json()["index_version"] == live
    assert answer(client)["citations"]
    # the next run publishes and drops what the killed one left
    (tmp_path / "note.md").write_text("# Note\n\nA note about the Caucasus trip.\n", encoding="utf-8")
    report = deployment.index(*sources, tmp_path / "note.md")
    assert report["exported"]
    assert not any("20990101T000000000000Z" in name for name in deployment.collections())
    wait_until(
        lambda: client.get("/readyz").json().get("index_version") == report["version"],
        RELOAD_WITHIN,
        "reload",
    )


def test_the_engine_down_or_unreachable_is_503_and_not_ready_until_it_answers(deployment: Deployment) -> None:
    client = deployment.service.client
    version = client.get("/readyz").json()["index_version"]
    engine = deployment.engine
    for fault, heal in ((engine.pause, engine.resume), (engine.kill, engine.start)):
        fault()
        try:
            started = time.monotonic()
            response = client.post("/v1/search", json={"query": "quokka"})
            took = time.monotonic() - started
            assert response.status_code == 503, response.text
            assert "Milvus" in response.json()["error"] and took < TIMEOUT * 3 + 5
            wait_until(lambda: client.get("/readyz").status_code == 503, TIMEOUT * 3 + 5, "not ready")
            assert "does not answer" in client.get("/readyz").json()["error"]
            assert client.post("/v1/ask", json={"question": QUESTION}).status_code == 503
        finally:
            heal()
        wait_until(lambda: client.get("/readyz").status_code == 200, 30, "ready again")
        assert client.get("/readyz").json()["index_version"] == version
        assert answer(client)["citations"]
