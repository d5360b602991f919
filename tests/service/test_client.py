"""The thin CLI client (`ragqa`, service/client.py) run as a real subprocess against the real server.

It runs as `python -S -m service.client` from a folder outside the repository with only the
repository on PYTHONPATH: -S leaves out site-packages, so these runs also prove that the client
needs nothing beyond the standard library. How it fails against a server with no index (503) and
one that has stopped is in test_lifecycle.py, which has such a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import ARMENIA, CORPUS, ODD_ID, OFF_TOPIC, REPO, STOLTENBERG, Server

pytestmark = pytest.mark.service


def ragqa(
    *args: str, url: str | None, stdin: str = "", cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8", **env}
    command = [sys.executable, "-S", "-m", "service.client", *args]
    if url is not None:
        command[4:4] = ["--url", url]
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, cwd=cwd, env=environment, timeout=120
    )


def post(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_the_seed_question_streams_the_answer_then_its_citations(server: Server, tmp_path: Path) -> None:
    run = ragqa(ARMENIA, url=server.base_url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    expected = post(server.client, "/v1/ask", {"question": ARMENIA})
    assert "security guarantees" in expected["answer"]
    # The answer comes first, exactly as the API gives it (the streamed deltas put together) ...
    assert run.stdout.startswith(expected["answer"] + "\n"), run.stdout[:300]
    assert "[1]" in expected["answer"]
    # ... then each citation: its number, title, source and the excerpt.
    listing = run.stdout[len(expected["answer"]) :]
    for citation in expected["citations"]:
        header = f"[{citation['n']}] {citation['title']} ({citation['source']})"
        assert header in listing
        first_words = " ".join(citation["excerpt"].split()[:8])
        assert first_words in " ".join(listing.split())


def test_ragqa_url_comes_from_the_environment(server: Server, tmp_path: Path) -> None:
    run = ragqa(ARMENIA, url=None, cwd=tmp_path, RAGQA_URL=server.base_url)
    assert run.returncode == 0, run.stderr
    assert "security guarantees" in run.stdout


def test_json_prints_the_raw_api_response(server: Server, tmp_path: Path) -> None:
    run = ragqa("--json", "-k", "2", ARMENIA, url=server.base_url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout)
    expected = post(server.client, "/v1/ask", {"question": ARMENIA, "top_k": 2})
    assert len(printed["passages"]) == 2
    for key in ("answer", "abstained", "citations", "passages", "index_version"):
        assert printed[key] == expected[key], key


def test_search_prints_the_passages_only(server: Server, tmp_path: Path) -> None:
    query = "NATO partnership with Georgia"
    run = ragqa("--search", "--top-k", "3", query, url=server.base_url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    results = post(server.client, "/v1/search", {"query": query, "top_k": 3})["results"]
    lines = [line for line in run.stdout.splitlines() if line[:1].isdigit()]
    assert [line.split(". ", 1)[1].split("  score")[0] for line in lines] == [
        f"{r['title']} ({r['source']})" for r in results
    ]
    assert "[1]" not in run.stdout  # no answer, no citations

    as_json = json.loads(ragqa("--search", "--json", query, url=server.base_url, cwd=tmp_path).stdout)
    assert [r["chunk_id"] for r in as_json["results"][:3]] == [r["chunk_id"] for r in results]


def test_source_and_doc_restrict_what_is_retrieved(server: Server, tmp_path: Path) -> None:
    """--source sends `filter.source_prefix`, --doc (repeatable) `filter.doc_ids`: "Where is Georgia?"
    finds the U.S. state's document unless only the seed article's folder is allowed."""
    question, prefix = "Where is Georgia?", f"{CORPUS}/"
    only = {"source_prefix": prefix}
    unfiltered = post(server.client, "/v1/search", {"query": question, "top_k": 3})["results"]
    assert any(not r["source"].startswith(prefix) for r in unfiltered), "the filter must change something"

    run = ragqa("--search", "-k", "3", "--source", prefix, question, url=server.base_url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    results = post(server.client, "/v1/search", {"query": question, "top_k": 3, "filter": only})["results"]
    assert results and all(r["source"].startswith(prefix) for r in results)
    lines = [line for line in run.stdout.splitlines() if line[:1].isdigit()]
    assert [line.split(". ", 1)[1].split("  score")[0] for line in lines] == [
        f"{r['title']} ({r['source']})" for r in results
    ]

    run = ragqa("--source", prefix, question, url=server.base_url, cwd=tmp_path)
    expected = post(server.client, "/v1/ask", {"question": question, "filter": only})
    assert run.returncode == (1 if expected["abstained"] else 0), run.stderr
    assert run.stdout.startswith(expected["answer"] + "\n")
    assert {c["doc_id"] for c in expected["citations"]} <= {STOLTENBERG}
    assert expected["answer"] != post(server.client, "/v1/ask", {"question": question})["answer"]

    both = ["--doc", ODD_ID, "--doc", "georgia.md", "--doc", ODD_ID]
    printed = json.loads(ragqa("--json", *both, question, url=server.base_url, cwd=tmp_path).stdout)
    assert {p["doc_id"] for p in printed["passages"]} == {ODD_ID, "georgia.md"}
    searched = json.loads(
        ragqa("--json", "--search", *both, question, url=server.base_url, cwd=tmp_path).stdout
    )
    assert {r["doc_id"] for r in searched["results"]} == {ODD_ID, "georgia.md"}

    nothing = ragqa("--source", "/no/such/folder/", ARMENIA, url=server.base_url, cwd=tmp_path)
    assert nothing.returncode == 1 and "abstained" in nothing.stdout, nothing.stdout + nothing.stderr
    assert "Closest passages" not in nothing.stdout
    empty = ragqa("--source", "", ARMENIA, url=server.base_url, cwd=tmp_path)
    assert empty.returncode == 2 and "--source" in empty.stderr


def test_an_abstention_says_so_and_exits_1(server: Server, tmp_path: Path) -> None:
    run = ragqa(OFF_TOPIC, url=server.base_url, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "abstained" in run.stdout
    assert "Closest passages:" in run.stdout
    assert "[1]" not in run.stdout
    assert ragqa("--json", OFF_TOPIC, url=server.base_url, cwd=tmp_path).returncode == 1


def test_an_interactive_session_keeps_the_conversation(server: Server, tmp_path: Path) -> None:
    """Questions piped in are one conversation: the follow-up "And what about Georgia?" finds the
    seed article's Georgia (the store also holds a document about the U.S. state)."""
    run = ragqa(url=server.base_url, cwd=tmp_path, stdin=f"{ARMENIA}\nAnd what about Georgia?\n")
    assert run.returncode == 0, run.stdout + run.stderr
    first = post(server.client, "/v1/ask", {"question": ARMENIA})
    history = [{"role": "user", "content": ARMENIA}, {"role": "assistant", "content": first["answer"]}]
    follow_up = post(server.client, "/v1/ask", {"question": "And what about Georgia?", "history": history})
    alone = post(server.client, "/v1/ask", {"question": "And what about Georgia?"})
    assert follow_up["answer"] != alone["answer"], (
        "the history must change the answer for this test to mean much"
    )
    assert run.stdout.startswith(first["answer"] + "\n")
    assert follow_up["answer"] in run.stdout
    assert alone["answer"] not in run.stdout
    assert all(c["doc_id"] == STOLTENBERG for c in follow_up["citations"])


def test_usage_errors_exit_2(server: Server, tmp_path: Path) -> None:
    for args in (["-k", "0", ARMENIA], ["--json"], ["--no-such-option", ARMENIA], ["-k", "x", ARMENIA]):
        run = ragqa(*args, url=server.base_url, cwd=tmp_path)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert "usage: ragqa" in run.stderr and "Traceback" not in run.stderr
    # A request the service rejects (422) is the user's to fix: exit 2 with the service's reason.
    run = ragqa("x" * 2001, url=server.base_url, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("ragqa: the service answered 422") and "question" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_help_shows_examples(tmp_path: Path) -> None:
    run = ragqa("--help", url=None, cwd=tmp_path)
    assert run.returncode == 0
    assert "examples:" in run.stdout and 'ragqa "Why did Armenia freeze CSTO membership?"' in run.stdout
    assert "exit codes" in run.stdout


def test_importing_the_client_pulls_in_nothing_heavy() -> None:
    heavy = ["numpy", "torch", "fastapi", "httpx", "pydantic", "indexer"]
    code = f"import sys, service.client; print([m for m in {heavy!r} if m in sys.modules])"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "[]", run.stdout + run.stderr
