"""Input limits over real HTTP: every invalid input is a 422 (413 for a body over 64 KB, 404 for an
unknown document) with a JSON `{"error": message}` that names what is wrong, and never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.conftest import Server

LIMIT = 64 * 1024


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, f"{response.status_code}: {response.text[:300]}"
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


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
    client: httpx.Client, case: str, body: Any, field: str
) -> None:
    message = error_of(client.post("/v1/ask", json=body), 422)
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
    client: httpx.Client, case: str, body: Any, field: str
) -> None:
    message = error_of(client.post("/v1/search", json=body), 422)
    assert field in message, message


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/search"])
def test_invalid_json_and_missing_body(client: httpx.Client, path: str) -> None:
    headers = {"content-type": "application/json"}
    for broken in (b'{"question": ', b"{bad", b'{"question": "a",}'):
        message = error_of(client.post(path, content=broken, headers=headers), 422)
        assert "JSON" in message, message
    assert "body" in error_of(client.post(path, headers=headers), 422)
    assert "body" in error_of(client.post(path), 422)


def test_limits_accept_their_boundaries(client: httpx.Client) -> None:
    for body in (
        {"question": "x" * 2000},
        {"question": "?", "top_k": 1},
        {"question": "Tbilisi", "top_k": 50},
    ):
        response = client.post("/v1/ask", json=body)
        assert response.status_code == 200, response.text
    # a body just under 64 KB is fine: the limit is on the body, whatever field makes it large
    history = [{"role": "user", "content": "Armenia and the CSTO " * 150}] * 20
    response = client.post("/v1/ask", json={"question": "And Georgia?", "history": history})
    assert response.status_code == 200, response.text
    assert LIMIT - 5000 < len(response.request.content) <= LIMIT


def test_body_over_64_kb_is_413_json(client: httpx.Client) -> None:
    """413 'content too large' (HTTP's own status for it) rather than 422: the body is refused before it
    is read, whatever it holds. With a Content-Length, and chunked without one."""
    body = b'{"question": "' + b"a" * LIMIT + b'"}'
    message = error_of(
        client.post("/v1/ask", content=body, headers={"content-type": "application/json"}), 413
    )
    assert str(LIMIT) in message, message

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = client.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert str(LIMIT) in error_of(response, 413)


def test_odd_inputs_never_fail(client: httpx.Client) -> None:
    """Questions a user may well send: punctuation, stopwords, control characters, other scripts."""
    for question in (
        "?",
        "the of and",
        "   ",
        "\x00",
        "Армения и ОДКБ?",
        "🙂" * 500,
        "<script>alert(1)</script>",
    ):
        for path, key in (("/v1/ask", "question"), ("/v1/search", "query")):
            response = client.post(path, json={key: question})
            assert response.status_code in (200, 422), f"{path} {question!r}: {response.status_code}"
    wrong_method = client.get("/v1/ask")
    assert error_of(wrong_method, 405)
    assert error_of(client.get("/v1/no-such-route"), 404)


def test_no_request_produced_a_500(server: Server) -> None:
    """The server's own counts: nothing in this session so far was answered with a 5xx."""
    errors = {key: n for key, n in server.statuses().items() if key[1].startswith("5")}
    assert not errors, errors
