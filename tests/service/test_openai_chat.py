"""The OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models) driven by the official `openai`
SDK against the session's real server over HTTP: cited answers, streamed and not, with history, the
same answer and citations as /v1/ask; abstentions; every bad request a 4xx in OpenAI's error shape;
the README's example run as written. Keys, with the SDK sending its api_key, in process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from service.answering import ABSTENTION
from service.config import ServiceSettings
from tests.service.conftest import ARMENIA, KEY, OFF_TOPIC, REPO, Server, serving

MODEL = "ragqa-extractive"
QUESTION = [{"role": "user", "content": ARMENIA}]
README_URL = "http://127.0.0.1:8000"


def sdk(server: Server, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0, timeout=60)


def ask(server: Server, question: str, history: list[dict[str, str]] | None = None) -> dict[str, Any]:
    response = server.client.post("/v1/ask", json={"question": question, "history": history or []})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def assert_exact(server: Server, citations: list[dict[str, Any]]) -> None:
    """Every citation is its document's text[start:end]."""
    for citation in citations:
        doc_id = citation["doc_id"]
        document = server.client.get(f"/v1/documents/{httpx.URL(path=doc_id).raw_path.decode()}").json()
        assert document["text"][citation["start"] : citation["end"]] == citation["excerpt"]
        assert document["title"] == citation["title"]


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == ("invalid_request_error" if status in (400, 404, 413) else error["type"])
    return error


@pytest.mark.service
def test_the_sdk_gets_the_cited_answer_of_ask(server: Server) -> None:
    reply = sdk(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": ARMENIA}])
    expected = ask(server, ARMENIA)
    assert reply.object == "chat.completion" and reply.model == MODEL and reply.id.startswith("chatcmpl-")
    (choice,) = reply.choices
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == expected["answer"] and "[1]" in expected["answer"]
    extension = (reply.model_extra or {})["ragqa"]
    assert extension["citations"] == expected["citations"] and extension["abstained"] is False
    assert extension["mode"] == "extractive" and extension["index_version"] == expected["index_version"]
    assert_exact(server, extension["citations"])
    usage = reply.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > usage.prompt_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.service
def test_streamed_chunks_add_up_to_the_answer_and_end_with_the_citations(server: Server) -> None:
    whole = sdk(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": ARMENIA}])
    stream = sdk(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": ARMENIA}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason == "stop"
    assert (finished[0].model_extra or {})["ragqa"]["citations"] == (whole.model_extra or {})["ragqa"][
        "citations"
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # the usage chunk, last
    assert chunks[-1].usage.total_tokens == (whole.usage.total_tokens if whole.usage else None)


@pytest.mark.service
def test_earlier_messages_are_the_history_of_ask(server: Server) -> None:
    first = ask(server, ARMENIA)
    follow_up = "And what about Georgia?"
    history = [{"role": "user", "content": ARMENIA}, {"role": "assistant", "content": first["answer"]}]
    messages: list[Any] = [{"role": "system", "content": "You are a helpful assistant."}, *history]
    messages.append({"role": "user", "content": [{"type": "text", "text": follow_up}]})  # content parts
    reply = sdk(server).chat.completions.create(model=MODEL, messages=messages)
    expected = ask(server, follow_up, history)
    assert reply.choices[0].message.content == expected["answer"]
    assert "Georgia" in expected["answer"] or "Tbilisi" in expected["answer"]


@pytest.mark.service
def test_an_abstention_is_an_ordinary_message_that_says_so(server: Server) -> None:
    reply = sdk(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": OFF_TOPIC}]
    )
    assert reply.choices[0].message.content == ABSTENTION and reply.choices[0].finish_reason == "stop"
    extension = (reply.model_extra or {})["ragqa"]
    assert extension["abstained"] is True and extension["citations"] == []


@pytest.mark.service
def test_the_models_are_the_answer_modes(server: Server) -> None:
    client = sdk(server)
    assert [m.id for m in client.models.list()] == [MODEL]  # no LLM configured: no generative model
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("ragqa-generative")
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": ARMENIA}])
    assert caught.value.code == "model_not_found" and "ragqa-extractive" in caught.value.message


@pytest.mark.service
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL}, "messages"),
        ({"messages": [{"role": "user", "content": ARMENIA}]}, "model"),
        ({"model": MODEL, "messages": [{"role": "assistant", "content": "Hello"}]}, "messages"),
        (
            {"model": MODEL, "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
            "messages.0.role",
        ),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": ARMENIA}]}, "messages.0.role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "   "}]}, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 2001}]}, "messages"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
        (
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            },
            "messages.0.content",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": ARMENIA}], "n": 2}, "n"),
        ({"model": MODEL, "messages": [{"role": "user", "content": ARMENIA}], "tools": [{"x": 1}]}, "tools"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": ARMENIA}], "temperature": 3},
            "temperature",
        ),
        ({"model": MODEL, "messages": "Why?"}, "messages"),
        ([], None),  # not an object: no one field to blame
    ],
)
def test_a_bad_request_is_a_400_in_openais_shape(server: Server, body: Any, param: str | None) -> None:
    error = assert_openai_error(server.client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param or (param is not None and error["param"].startswith(param + "."))


@pytest.mark.service
def test_not_json_and_huge_bodies_are_4xx_in_openais_shape(server: Server) -> None:
    broken = server.client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert "invalid JSON" in assert_openai_error(broken, 400)["message"]
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 100_000}]}
    assert_openai_error(server.client.post("/v1/chat/completions", json=huge), 413)
    with pytest.raises(openai.BadRequestError) as caught:  # the SDK reads the shape
        sdk(server).chat.completions.create(model=MODEL, messages=[{"role": "assistant", "content": "Hi"}])
    assert "must be the user's question" in caught.value.message
    assert server.client.post("/v1/ask", json={}).json()["error"].startswith("invalid request")  # ours


@pytest.mark.service
def test_the_readme_example_runs_as_written(server: Server, tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL) if "from openai" in b]
    assert len(blocks) == 1 and len(blocks[0].strip().splitlines()) == 5
    script = tmp_path / "example.py"
    script.write_text(blocks[0].replace(README_URL, server.base_url), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "security guarantees" in lines[0] and "[1]" in lines[0]
    assert lines[1].startswith("[1] Stoltenberg in the South Caucasus, characters ")


@pytest.mark.unit
def test_keys_are_the_apis_bearer_keys(store: Path) -> None:
    """Reads that require a key: the SDK's api_key is the Bearer key (in process, the real runtime)."""
    settings = ServiceSettings(store=store, read_requires_key=True, api_keys=KEY)
    with serving(settings) as client:
        keyed = openai.OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=client, max_retries=0)
        reply = keyed.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": ARMENIA}])
        assert "[1]" in (reply.choices[0].message.content or "")
        wrong = openai.OpenAI(
            base_url="http://testserver/v1", api_key="nope", http_client=client, max_retries=0
        )
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.models.list()
        assert caught.value.code == "invalid_api_key" and "not valid" in caught.value.message
        anonymous = client.post("/v1/chat/completions", json={"model": MODEL, "messages": []})
        assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
        assert json.loads(client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).text)["data"]
