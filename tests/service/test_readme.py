"""Every curl example in the README runs, as written, against a real server (only the address changes)."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from tests.service.conftest import REPO, Server

README_URL = "http://127.0.0.1:8000"


def curl_examples() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        joined = block.replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]
    return commands


def test_the_readme_has_curl_examples_for_every_route() -> None:
    commands = " ".join(curl_examples())
    for route in ("/v1/ask", "/v1/search", "/v1/documents", "/healthz", "/readyz", "/metrics"):
        assert route in commands


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
    if "Why did Armenia freeze" in command and "history" not in command:
        assert "security guarantees" in answer["answer"] and not answer["abstained"]
        assert answer["citations"][0]["excerpt"] in answer["answer"]
    if "boiling point of mercury" in command:
        assert answer["abstained"] is True and answer["citations"] == [] and answer["passages"]
    if "And what about Georgia" in command:
        assert "Georgia" in answer["answer"] or "Tbilisi" in answer["answer"]
