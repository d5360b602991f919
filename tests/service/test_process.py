"""What only the real server process shows, on the session's server (`python -m service.cli`): the JSON
lines it logs carry each request's id and never a question or a document's text, and it runs on
jemalloc where the machine has it. That it shuts down cleanly on SIGTERM is checked whenever a test
server stops (conftest's `stop_server`) and on its own in test_lifecycle.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.service.conftest import Server

pytestmark = pytest.mark.service


def test_the_log_lines_carry_the_request_id_and_no_text(server: Server) -> None:
    secret = "What does the zebra-striped okapi eat in the Ituri?"
    response = server.client.post("/v1/ask", json={"question": secret}, headers={"X-Request-ID": "trace-42"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-42"
    deadline = time.monotonic() + 5  # the request's line is written as its response ends
    while '"request_id": "trace-42"' not in server.log.read_text(encoding="utf-8"):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.05)
    log = server.log.read_text(encoding="utf-8")
    assert '"request_id": "trace-42"' in log and '"route": "/v1/ask"' in log
    # No question or document text in the logs at INFO.
    assert "zebra" not in log and "okapi eat" not in log and "Armenian membership" not in log


def test_the_server_runs_on_jemalloc_when_the_machine_has_it(server: Server) -> None:
    """Under glibc's malloc the server's memory creeps up under load; ragqa-serve restarts itself with
    jemalloc preloaded when it is installed (bench/load.py measures the difference)."""
    from service.cli import JEMALLOC

    if not any(Path(p).exists() for p in JEMALLOC):
        pytest.skip("no jemalloc on this machine (apt-get install libjemalloc2)")
    maps = Path(f"/proc/{server.process.pid}/maps").read_text(encoding="utf-8")
    assert "libjemalloc" in maps
