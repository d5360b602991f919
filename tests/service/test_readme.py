"""Every curl and `ragqa` example in the README runs, as written, against the session's real server (only
the address changes). The keyed write API's examples need a server with keys: test_lifecycle.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import REPO, Server

README_URL = "http://127.0.0.1:8000"


def all_curl_examples() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        joined = block.replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]
    return commands


def curl_examples() -> list[str]:
    """The examples of the read API (the keyed write API's are run by test_lifecycle.py)."""
    return [c for c in all_curl_examples() if "$KEY" not in c]


@pytest.mark.unit
def test_the_readme_has_curl_examples_for_every_route() -> None:
    commands = " ".join(curl_examples())
    routes = ("/v1/ask", "/v1/search", "/v1/documents", "/v1/chat/completions", "/v1/models", "/healthz")
    for route in (*routes, "/readyz", "/metrics"):
        assert route in commands


@pytest.mark.service
@pytest.mark.parametrize("command", curl_examples())
def test_readme_curl_example(command: str, server: Server) -> None:
    result = subprocess.run(
        ["bash", "-c", command.replace(README_URL, server.base_url) + " -w '\\n%{http_code}'"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    assert status == "200", body
    if "/metrics" in command:
        assert "ragqa_http_requests_total" in body
        return
    if '"stream": true' in command:
        assert "event: passages" in body and "event: delta" in body and body.rstrip().endswith("}")
        assert "event: done" in body
        return
    answer: dict[str, Any] = json.loads(body)
    if "/v1/chat/completions" in command:  # OpenAI's form: the answer is the assistant's message
        content = answer["choices"][0]["message"]["content"]
        assert "security guarantees" in content and answer["ragqa"]["citations"][0]["excerpt"] in content
        return
    if "/v1/models" in command:
        assert [m["id"] for m in answer["data"]] == ["ragqa-extractive"]
        return
    if "Why did Armenia freeze" in command and "history" not in command:
        assert "security guarantees" in answer["answer"] and not answer["abstained"]
        assert answer["citations"][0]["excerpt"] in answer["answer"]
    if "boiling point of mercury" in command:
        assert answer["abstained"] is True and answer["citations"] == [] and answer["passages"]
    if "And what about Georgia" in command:
        assert "Georgia" in answer["answer"] or "Tbilisi" in answer["answer"]


def cli_examples() -> list[str]:
    """The commands of the README's `ragqa` block (each line that runs the client)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Command line: `ragqa`") :]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert block, "the README's CLI section has a sh block of examples"
    return [
        line.strip() for line in block.group(1).splitlines() if re.match(r"(RAGQA_URL=\S+ )?ragqa\b", line)
    ]


def run_cli_example(command: str, server: Server) -> subprocess.CompletedProcess[str]:
    """As written, with `ragqa` from this environment, the default address (or any other the command
    names) pointing at the test's server, and nothing on standard input."""
    command = re.sub(r"http://[\d.]+:\d+", server.base_url, command)
    env = {
        **os.environ,
        "RAGQA_URL": server.base_url,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    )


@pytest.mark.service
@pytest.mark.parametrize("command", cli_examples())
def test_readme_cli_example(command: str, server: Server) -> None:
    result = run_cli_example(command, server)
    assert result.returncode in (0, 1), result.stderr  # answered, or abstained
    assert result.stderr == ""
    if "Why did Armenia freeze" in command:
        assert "security guarantees" in result.stdout
    if "--json" in command:
        assert json.loads(result.stdout)["citations"]
    if "--search -k 3" in command:
        assert [line[:2] for line in result.stdout.splitlines() if line[:1].isdigit()] == ["1.", "2.", "3."]


@pytest.mark.service
def test_readme_cli_transcript_is_what_the_client_prints(server: Server) -> None:
    """The README's `$ ragqa ...` transcript, line by line (wrapped, and shortened where it ends in
    "…"), appears in what the command prints."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    transcript = re.search(r"```\n\$ (ragqa .*?)\n(.*?)```", text, flags=re.DOTALL)
    assert transcript, "the README shows a ragqa transcript"
    printed = run_cli_example(transcript.group(1), server).stdout
    printed = " ".join(printed.replace(f"{REPO}/", "").split())  # the test's store names absolute sources
    shown = " ".join(transcript.group(2).split())
    for part in shown.split(" … "):
        assert part.removesuffix(" …") in printed, part
