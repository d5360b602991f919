"""The keyed write API against the real server: uploads into the corpus folder, index jobs that run
`ragqa-index` for real, deletions, keys, the route policy, request ids and what the logs hold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.access import route_access
from service.app import create_app
from service.config import ServiceSettings
from tests.service.conftest import CORPUS, Server, index, start_server, stop_server
from tests.service.test_readme import all_curl_examples

KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
OKAPI = (
    "# Okapi\n\nThe okapi is a forest giraffe that lives in the Ituri rainforest of the Congo. "
    "It has zebra-striped legs and a long tongue.\n"
)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """A server with API keys over a store built from its own corpus folder (a copy of corpus/)."""
    root = tmp_path_factory.mktemp("writes")
    corpus = root / "corpus"
    shutil.copytree(CORPUS, corpus)
    index([corpus], root / "store")
    server = start_server(
        root / "store",
        root / "server.log",
        api_keys=f"{KEY},other-key",
        corpus=str(corpus),
        max_upload_mb="0.05",
    )
    try:
        server.wait_for("/readyz")
        yield server, corpus
    finally:
        stop_server(server)


def wait_for_job(server: Server, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        if job["status"] in ("done", "failed"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not finished in {timeout} s")


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_writes_need_a_key(keyed: tuple[Server, Path], client: httpx.Client) -> None:
    server, corpus = keyed
    files = {"files": ("okapi.md", OKAPI.encode())}
    before = tree(corpus)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        response = server.client.post("/v1/documents", files=files, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer" and response.json()["error"]
    assert server.client.delete("/v1/documents/stoltenberg-in-the-south-caucasus.md").status_code == 401
    assert server.client.get("/v1/jobs/anything").status_code == 401
    assert tree(corpus) == before
    # The session's server has no keys: its write API is disabled.
    response = client.post("/v1/documents", files=files, headers=AUTH)
    assert response.status_code == 403 and "RAGQA_API_KEYS" in response.json()["error"]
    # Reads stay open.
    assert server.client.post("/v1/search", json={"query": "Armenia"}).status_code == 200


def test_an_uploaded_document_becomes_answerable_and_a_deleted_one_goes(keyed: tuple[Server, Path]) -> None:
    server, corpus = keyed
    question = {"question": "Where does the okapi live?"}
    assert server.client.post("/v1/ask", json=question).json()["abstained"] is True

    response = server.client.post(
        "/v1/documents", files={"files": ("okapi.md", OKAPI.encode())}, headers=AUTH
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["files"] == ["okapi.md"] and (corpus / "okapi.md").read_text() == OKAPI
    job = wait_for_job(server, accepted["job_id"])
    assert job["status"] == "done", job
    assert job["report"]["published"] is True and job["report"]["documents"] == 2

    deadline = time.monotonic() + 10  # the hot reload picks the new version up
    while time.monotonic() < deadline:
        answer = server.client.post("/v1/ask", json=question).json()
        if not answer["abstained"]:
            break
        time.sleep(0.2)
    assert "Ituri rainforest" in answer["answer"] and answer["citations"][0]["doc_id"] == "okapi.md"

    response = server.client.delete("/v1/documents/okapi.md", headers=AUTH)
    assert response.status_code == 202
    assert wait_for_job(server, response.json()["job_id"])["status"] == "done"
    assert not (corpus / "okapi.md").exists()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ids = [d["doc_id"] for d in server.client.get("/v1/documents").json()["documents"]]
        if "okapi.md" not in ids:
            break
        time.sleep(0.2)
    assert ids == ["stoltenberg-in-the-south-caucasus.md"]
    assert server.client.delete("/v1/documents/okapi.md", headers=AUTH).status_code == 404
    assert server.client.get("/v1/jobs/no-such-job", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("../../escaped.md", 400),
        ("/tmp/escaped.md", 400),
        ("..\\..\\escaped.md", 400),
        ("sub/escaped.md", 400),
        (".hidden.md", 400),
        ("..", 400),
        ("escaped.exe", 415),
        ("escaped", 415),
    ],
)
def test_unsafe_uploads_write_nothing(keyed: tuple[Server, Path], name: str, status: int) -> None:
    server, corpus = keyed
    outside = tree(corpus.parent)
    response = server.client.post(
        "/v1/documents",
        files=[("files", ("fine.md", b"# Fine\n\nA fine file.\n")), ("files", (name, b"x"))],
        headers=AUTH,
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert tree(corpus.parent) == outside  # nothing written, not even the valid file beside it


def test_a_nul_byte_in_a_name_is_refused(keyed: tuple[Server, Path]) -> None:
    """httpx will not put a NUL in a header, so the multipart body is written by hand."""
    server, corpus = keyed
    before = tree(corpus.parent)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="a\x00../../b.md"\r\n'
        b"Content-Type: text/markdown\r\n\r\nhello\r\n--b--\r\n"
    )
    response = server.client.post(
        "/v1/documents", content=body, headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code in (400, 422), response.text
    assert tree(corpus.parent) == before


def test_uploads_have_a_size_limit(keyed: tuple[Server, Path]) -> None:
    server, corpus = keyed
    big = b"A sentence about nothing in particular. " * 2000  # 80 KB; the limit is 0.05 MB
    response = server.client.post("/v1/documents", files={"files": ("big.txt", big)}, headers=AUTH)
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert not (corpus / "big.txt").exists()


def test_jobs_run_one_at_a_time_in_order(keyed: tuple[Server, Path]) -> None:
    server, _ = keyed
    ids = []
    for n in range(3):
        text = f"# Note {n}\n\nThe note number {n} is about river otters and their dens.\n".encode()
        response = server.client.post("/v1/documents", files={"files": (f"note-{n}.md", text)}, headers=AUTH)
        assert response.status_code == 202
        ids.append(response.json()["job_id"])
    statuses = [server.client.get(f"/v1/jobs/{i}", headers=AUTH).json()["status"] for i in ids]
    assert statuses.count("running") <= 1 and statuses[-1] == "queued", statuses
    jobs = [wait_for_job(server, i) for i in ids]
    assert [j["status"] for j in jobs] == ["done"] * 3
    for before, after in zip(jobs, jobs[1:], strict=False):
        assert before["finished"] <= after["started"]  # never two at once, first come first served
    for n in range(3):
        wait_for_job(
            server, server.client.delete(f"/v1/documents/note-{n}.md", headers=AUTH).json()["job_id"]
        )


def test_every_route_is_keyed_or_explicitly_public(tmp_path: Path) -> None:
    app = create_app(ServiceSettings(store=tmp_path / "store"))
    access = route_access(app)
    assert access["POST /v1/documents"] == access["DELETE /v1/documents/{doc_id:path}"] == "write"
    assert access["GET /v1/jobs/{job_id}"] == "write"
    for route in ("POST /v1/ask", "POST /v1/search", "GET /v1/documents", "GET /v1/documents/{doc_id:path}"):
        assert access[route] == "read", route
    for route in ("GET /healthz", "GET /readyz", "GET /metrics", "GET /"):
        assert access[route] == "public", route
    assert all(level in ("public", "read", "write") for level in access.values())

    @app.get("/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="/v1/forgotten"):
        route_access(app)
    assert isinstance(app, FastAPI)


def test_reads_can_require_a_key(tmp_path: Path, store: Path) -> None:
    own = start_server(store, tmp_path / "server.log", api_keys=KEY, read_requires_key="true")
    try:
        own.wait_for("/readyz")
        assert own.client.post("/v1/search", json={"query": "Armenia"}).status_code == 401
        assert own.client.get("/v1/documents").status_code == 401
        assert own.client.post("/v1/search", json={"query": "Armenia"}, headers=AUTH).status_code == 200
        assert own.client.get("/healthz").status_code == 200  # operations stay public
    finally:
        stop_server(own)


def test_every_response_carries_a_request_id_that_the_logs_share(keyed: tuple[Server, Path]) -> None:
    server, _ = keyed
    secret = "What does the zebra-striped okapi eat in the Ituri?"
    response = server.client.post("/v1/ask", json={"question": secret}, headers={"X-Request-ID": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    generated = server.client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32 and generated != "trace-42"
    assert (
        server.client.get("/healthz", headers={"X-Request-ID": "bad id\x7f"}).headers["x-request-id"]
        != "bad id"
    )
    log = server.log.read_text(encoding="utf-8")
    assert '"request_id": "trace-42"' in log and '"route": "/v1/ask"' in log
    # No question or document text in the logs at INFO.
    assert "zebra" not in log and "okapi eat" not in log and "Armenian membership" not in log


def test_the_readme_write_examples_run_as_written(keyed: tuple[Server, Path], tmp_path: Path) -> None:
    server, corpus = keyed
    commands = [c for c in all_curl_examples() if "$KEY" in c]
    upload, job, delete = (
        next(c for c in commands if marker in c) for marker in ("-F files", "/v1/jobs/", "DELETE")
    )
    (tmp_path / "notes.md").write_text("# Notes\n\nThe beavers built a dam on the river.\n", encoding="utf-8")
    (tmp_path / "minutes.txt").write_text(
        "The committee met on Tuesday and approved the budget.\n", encoding="utf-8"
    )

    def run(command: str) -> dict[str, Any]:
        command = command.replace("http://127.0.0.1:8000", server.base_url)
        done = subprocess.run(
            ["bash", "-c", command],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "KEY": KEY},
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    accepted = run(upload)
    assert accepted["files"] == ["notes.md", "minutes.txt"] and (corpus / "minutes.txt").is_file()
    assert wait_for_job(server, accepted["job_id"])["status"] == "done"
    assert run(job.replace("JOB_ID", accepted["job_id"]))["status"] == "done"
    assert wait_for_job(server, run(delete)["job_id"])["status"] == "done"
    assert not (corpus / "notes.md").exists()
    (corpus / "minutes.txt").unlink()
