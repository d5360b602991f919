"""The HTTP layer in process, without the model: validation, limits, error bodies, request ids, 503s
and who may call what. The real app (create_app) over an empty store, its runtime built by hand
(conftest's `bare_app`): every invalid input is a 422 (413 for a body over 64 KB) with a JSON
`{"error": message}` that names what is wrong; a valid read answers 503 until an index exists. None
of these tests needs an answer, so none may load the model (each app checks it on the way out)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.access import route_access
from service.app import create_app
from service.config import ServiceSettings
from tests.service.conftest import ARMENIA, AUTH, CORPUS, KEY, Reply, bare_app

pytestmark = pytest.mark.unit

LIMIT = 64 * 1024


def error_of(response: Reply, status: int) -> str:
    assert response.status_code == status, f"{response.status_code}: {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """No keys, no index yet."""
    with bare_app(tmp_path_factory.mktemp("no-index") / "store") as app:
        yield app.client
    assert not app.model.loaded, "a test that needs no answer loaded the model"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    """API keys, its own corpus folder (a copy of corpus/) and an upload limit of 0.05 MB."""
    root = tmp_path_factory.mktemp("keyed")
    corpus = root / "corpus"
    shutil.copytree(CORPUS, corpus)
    with bare_app(root / "store", api_keys=f"{KEY},other-key", corpus=corpus, max_upload_mb=0.05) as app:
        yield app.client, corpus
    assert not app.model.loaded, "a test that needs no answer loaded the model"


# --- validation ----------------------------------------------------------------------------------

ASK_INVALID: list[tuple[str, Any, str]] = [
    ("empty question", {"question": ""}, "question"),
    ("question of 2,001 characters", {"question": "a" * 2001}, "question"),
    ("top_k 0", {"question": "Why?", "top_k": 0}, "top_k"),
    ("top_k 51", {"question": "Why?", "top_k": 51}, "top_k"),
    ("top_k negative", {"question": "Why?", "top_k": -3}, "top_k"),
    ("unknown field", {"question": "Why?", "temperature": 0.2}, "temperature"),
    ("missing question", {"top_k": 3}, "question"),
    ("question not a string", {"question": 42}, "question"),
    ("question a list", {"question": ["a", "b"]}, "question"),
    ("top_k a word", {"question": "Why?", "top_k": "five"}, "top_k"),
    ("top_k a fraction", {"question": "Why?", "top_k": 2.5}, "top_k"),
    ("stream not a boolean", {"question": "Why?", "stream": "maybe"}, "stream"),
    ("history not a list", {"question": "Why?", "history": "earlier"}, "history"),
    ("history turn not an object", {"question": "Why?", "history": [1]}, "history.0"),
    (
        "history role unknown",
        {"question": "Why?", "history": [{"role": "bot", "content": "x"}]},
        "history.0.role",
    ),
    ("history content missing", {"question": "Why?", "history": [{"role": "user"}]}, "history.0.content"),
    ("blank question", {"question": " \t "}, "question"),
    ("top_k a boolean", {"question": "Why?", "top_k": True}, "top_k"),
    ("body a list", ["Why?"], "body"),
    ("body null", None, "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), ASK_INVALID, ids=[c[0] for c in ASK_INVALID])
def test_ask_rejects_invalid_input_naming_the_field(
    bare: TestClient, case: str, body: Any, field: str
) -> None:
    message = error_of(bare.post("/v1/ask", json=body), 422)
    assert field in message, message


SEARCH_INVALID: list[tuple[str, Any, str]] = [
    ("empty query", {"query": ""}, "query"),
    ("blank query", {"query": "  \n "}, "query"),
    ("top_k a boolean", {"query": "NATO", "top_k": True}, "top_k"),
    ("top_k a string", {"query": "NATO", "top_k": "3"}, "top_k"),
    ("query of 2,001 characters", {"query": "a" * 2001}, "query"),
    ("top_k 0", {"query": "NATO", "top_k": 0}, "top_k"),
    ("top_k 51", {"query": "NATO", "top_k": 51}, "top_k"),
    ("unknown field", {"query": "NATO", "history": []}, "history"),
    ("question instead of query", {"question": "NATO"}, "query"),
    ("query not a string", {"query": {"text": "NATO"}}, "query"),
]


@pytest.mark.parametrize(("case", "body", "field"), SEARCH_INVALID, ids=[c[0] for c in SEARCH_INVALID])
def test_search_rejects_invalid_input_naming_the_field(
    bare: TestClient, case: str, body: Any, field: str
) -> None:
    message = error_of(bare.post("/v1/search", json=body), 422)
    assert field in message, message


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/search"])
def test_invalid_json_and_missing_body(bare: TestClient, path: str) -> None:
    headers = {"content-type": "application/json"}
    for broken in (b'{"question": ', b"{bad", b'{"question": "a",}'):
        message = error_of(bare.post(path, content=broken, headers=headers), 422)
        assert "JSON" in message, message
    assert "body" in error_of(bare.post(path, headers=headers), 422)
    assert "body" in error_of(bare.post(path), 422)


# --- limits and error bodies ---------------------------------------------------------------------


def test_body_over_64_kb_is_413_json(bare: TestClient) -> None:
    """413 'content too large' (HTTP's own status for it) rather than 422: the body is refused before it
    is read, whatever it holds. With a Content-Length, and chunked without one."""
    body = b'{"question": "' + b"a" * LIMIT + b'"}'
    message = error_of(bare.post("/v1/ask", content=body, headers={"content-type": "application/json"}), 413)
    assert str(LIMIT) in message, message

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = bare.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert str(LIMIT) in error_of(response, 413)


def test_a_wrong_method_and_an_unknown_route_are_json_errors(bare: TestClient) -> None:
    assert error_of(bare.get("/v1/ask"), 405)
    assert error_of(bare.get("/v1/no-such-route"), 404)


# --- request ids ---------------------------------------------------------------------------------


def test_every_response_carries_a_request_id(bare: TestClient) -> None:
    """The caller's X-Request-ID when it is a sane token, else a new one (the real server's logs
    carrying it are checked in test_process.py)."""
    response = bare.post("/v1/ask", json={"question": ARMENIA}, headers={"X-Request-ID": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    generated = bare.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32 and generated != "trace-42"
    assert bare.get("/healthz", headers={"X-Request-ID": "bad id\x7f"}).headers["x-request-id"] != "bad id"
    invalid = bare.post("/v1/ask", json={"question": ""}, headers={"X-Request-ID": "trace-43"})
    assert invalid.status_code == 422 and invalid.headers["x-request-id"] == "trace-43"


# --- 503: no runtime, no index yet ---------------------------------------------------------------


def test_without_its_lifespan_the_app_answers_503_but_healthz(tmp_path: Path) -> None:
    client = TestClient(create_app(ServiceSettings(store=tmp_path / "store")))
    assert client.get("/healthz").json() == {"status": "ok"}
    for method, path, body in (
        ("GET", "/readyz", None),
        ("POST", "/v1/ask", {"question": ARMENIA}),
        ("POST", "/v1/search", {"query": "Armenia"}),
        ("GET", "/v1/documents", None),
    ):
        message = error_of(client.request(method, path, json=body), 503)
        assert "lifespan" in message, message


def test_not_ready_without_an_index(bare: TestClient) -> None:
    assert bare.get("/healthz").status_code == 200
    for method, path, body in (
        ("GET", "/readyz", None),
        ("POST", "/v1/ask", {"question": ARMENIA}),
        ("POST", "/v1/ask", {"question": ARMENIA, "stream": True}),
        ("POST", "/v1/search", {"query": "Armenia"}),
        ("GET", "/v1/documents", None),
        ("GET", "/v1/documents/anything", None),
    ):
        response = bare.request(method, path, json=body)
        assert response.status_code == 503, f"{path}: {response.status_code} {response.text}"
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"], path
    # invalid input is still invalid input, whether or not an index is loaded
    assert bare.post("/v1/ask", json={"question": ""}).status_code == 422
    assert bare.get("/metrics").status_code == 200


# --- who may call what ---------------------------------------------------------------------------


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


def test_writes_need_a_key(keyed: tuple[TestClient, Path], bare: TestClient) -> None:
    client, corpus = keyed
    files = {"files": ("okapi.md", b"# Okapi\n\nThe okapi lives in the Ituri rainforest.\n")}
    before = tree(corpus)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
        response = client.post("/v1/documents", files=files, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer" and response.json()["error"]
    assert client.delete("/v1/documents/stoltenberg-in-the-south-caucasus.md").status_code == 401
    assert client.get("/v1/jobs/anything").status_code == 401
    assert tree(corpus) == before
    # Without keys configured the write API is disabled, whatever the caller sends.
    response = bare.post("/v1/documents", files=files, headers=AUTH)
    assert response.status_code == 403 and "RAGQA_API_KEYS" in response.json()["error"]
    assert bare.get("/v1/jobs/anything", headers=AUTH).status_code == 403


def test_unknown_jobs_and_documents_are_404_for_a_keyed_caller(keyed: tuple[TestClient, Path]) -> None:
    client, corpus = keyed
    before = tree(corpus)
    assert error_of(client.get("/v1/jobs/no-such-job", headers=AUTH), 404)
    for doc_id in ("okapi.md", "../outside.md"):
        assert error_of(client.delete(f"/v1/documents/{doc_id}", headers=AUTH), 404)
    assert tree(corpus) == before


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
def test_unsafe_uploads_write_nothing(keyed: tuple[TestClient, Path], name: str, status: int) -> None:
    client, corpus = keyed
    outside = tree(corpus.parent)
    response = client.post(
        "/v1/documents",
        files=[("files", ("fine.md", b"# Fine\n\nA fine file.\n")), ("files", (name, b"x"))],
        headers=AUTH,
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert tree(corpus.parent) == outside  # nothing written, not even the valid file beside it


def test_a_nul_byte_in_a_name_is_refused(keyed: tuple[TestClient, Path]) -> None:
    """httpx will not put a NUL in a header, so the multipart body is written by hand."""
    client, corpus = keyed
    before = tree(corpus.parent)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="files"; filename="a\x00../../b.md"\r\n'
        b"Content-Type: text/markdown\r\n\r\nhello\r\n--b--\r\n"
    )
    response = client.post(
        "/v1/documents", content=body, headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code in (400, 422), response.text
    assert tree(corpus.parent) == before


def test_uploads_have_a_size_limit(keyed: tuple[TestClient, Path]) -> None:
    client, corpus = keyed
    big = b"A sentence about nothing in particular. " * 2000  # 80 KB; the limit is 0.05 MB
    response = client.post("/v1/documents", files={"files": ("big.txt", big)}, headers=AUTH)
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert not (corpus / "big.txt").exists()
