"""One real server (`python -m service.cli`) through its life, which only a real process can show. It
starts on an EMPTY store folder, with API keys and a corpus folder of its own (a copy of corpus/):

1. no index: /readyz is 503 and the CLI client says so in one line;
2. the test process indexes: the server serves that version within seconds;
3. the write API: uploads and deletes run `ragqa-index` as a subprocess (an index job), whose version
   the hot reload serves, as the README's examples show; jobs run one at a time, in order;
4. SIGTERM: it shuts down cleanly, and the client then cannot reach it.

Tier `slow`: besides its own server, each index job is an interpreter that loads the model (several
seconds each). The tests run in this order and each brings the server to the state it needs, so any
one runs alone. Hot reload under traffic is test_reload.py (on the session's server); what an app
answers (validation, keys, limits, 503s) is tested in process: test_http.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import (
    ARMENIA,
    AUTH,
    KEY,
    Server,
    corpus_workdir,
    index,
    start_server,
    stop_server,
    wait_until,
)
from tests.service.test_client import ragqa
from tests.service.test_readme import all_curl_examples

pytestmark = pytest.mark.slow

RELOAD_WITHIN = 10.0  # seconds; the server polls CURRENT every second by default
OKAPI = (
    "# Okapi\n\nThe okapi is a forest giraffe that lives in the Ituri rainforest of the Congo. "
    "It has zebra-striped legs and a long tongue.\n"
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus_workdir(tmp_path_factory, "lifecycle")


@pytest.fixture(scope="module")
def life(workdir: Path) -> Iterator[Server]:
    running = start_server(
        workdir / "store", workdir / "server.log", api_keys=f"{KEY},other-key", corpus=str(workdir / "corpus")
    )
    try:
        yield running
    finally:
        stop_server(running)  # after the last test it has stopped already: this checks how it ended


def ensure_indexed(server: Server, workdir: Path) -> None:
    if server.client.get("/readyz").status_code != 200:
        index([workdir / "corpus"], workdir / "store")
        server.wait_for("/readyz", timeout=RELOAD_WITHIN)


def wait_for_job(server: Server, job_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = server.client.get(f"/v1/jobs/{job_id}", headers=AUTH).json()
        if job["status"] in ("done", "failed"):
            return job  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not finished in {timeout} s")


def document_ids(server: Server) -> list[str]:
    return sorted(d["doc_id"] for d in server.client.get("/v1/documents").json()["documents"])


# --- 1. no index yet ------------------------------------------------------------------------------


def test_without_an_index_it_is_not_ready_and_the_client_says_so(life: Server, tmp_path: Path) -> None:
    assert life.client.get("/healthz").status_code == 200
    ready = life.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"]
    run = ragqa(ARMENIA, url=life.base_url, cwd=tmp_path)
    assert run.returncode == 3, run.stdout + run.stderr
    assert run.stderr.startswith("ragqa: the service answered 503")
    assert len(run.stderr.strip().splitlines()) == 1


# --- 2. a version published by another process ----------------------------------------------------


def test_an_index_published_while_it_runs_is_served(life: Server, workdir: Path) -> None:
    client = life.client
    report = index([workdir / "corpus"], workdir / "store")  # while the server runs
    assert report.published
    waited = wait_until(
        lambda: client.get("/readyz").status_code == 200, RELOAD_WITHIN, "ready after indexing"
    )
    assert client.get("/readyz").json()["index_version"] == report.version
    result = client.post("/v1/ask", json={"question": ARMENIA})
    assert result.status_code == 200 and result.json()["index_version"] == report.version
    print(f"ready {waited:.1f} s after the index was published")


# --- 3. the write API: index jobs -----------------------------------------------------------------


def test_the_readme_write_examples_upload_what_is_then_answered_and_delete_it(
    life: Server, workdir: Path, tmp_path: Path
) -> None:
    """The README's upload, job and delete commands run as written (only the address changes). The
    uploaded notes.md says where the okapi lives: unanswerable before, answered and cited after the
    upload's job, gone after the delete's."""
    ensure_indexed(life, workdir)
    corpus = workdir / "corpus"
    commands = [c for c in all_curl_examples() if "$KEY" in c]
    upload, job, delete = (
        next(c for c in commands if marker in c) for marker in ("-F files", "/v1/jobs/", "DELETE")
    )
    assert "notes.md" in upload and "minutes.txt" in upload and "notes.md" in delete
    (tmp_path / "notes.md").write_text(OKAPI, encoding="utf-8")
    (tmp_path / "minutes.txt").write_text(
        "The committee met on Tuesday and approved the budget.\n", encoding="utf-8"
    )
    question = {"question": "Where does the okapi live?"}
    assert life.client.post("/v1/ask", json=question).json()["abstained"] is True
    before = document_ids(life)

    def run(command: str) -> dict[str, Any]:
        command = command.replace("http://127.0.0.1:8000", life.base_url)
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
    assert (corpus / "notes.md").read_text(encoding="utf-8") == OKAPI
    done = wait_for_job(life, accepted["job_id"])
    assert done["status"] == "done", done
    assert done["report"]["published"] is True and done["report"]["documents"] == len(before) + 2
    assert run(job.replace("JOB_ID", accepted["job_id"]))["status"] == "done"

    def answered() -> bool:  # the hot reload picks the new version up
        return not life.client.post("/v1/ask", json=question).json()["abstained"]

    wait_until(answered, RELOAD_WITHIN, "the okapi question answered")
    answer = life.client.post("/v1/ask", json=question).json()
    assert "Ituri rainforest" in answer["answer"] and answer["citations"][0]["doc_id"] == "notes.md"

    assert wait_for_job(life, run(delete)["job_id"])["status"] == "done"
    assert not (corpus / "notes.md").exists()
    expected = sorted({*before, "minutes.txt"})
    wait_until(lambda: document_ids(life) == expected, RELOAD_WITHIN, "notes.md gone from the index")
    (corpus / "minutes.txt").unlink()


def test_index_jobs_run_one_at_a_time_in_order(life: Server, workdir: Path) -> None:
    ensure_indexed(life, workdir)
    ids = []
    for n in range(3):
        text = f"# Note {n}\n\nThe note number {n} is about river otters and their dens.\n".encode()
        response = life.client.post("/v1/documents", files={"files": (f"note-{n}.md", text)}, headers=AUTH)
        assert response.status_code == 202
        ids.append(response.json()["job_id"])
    statuses = [life.client.get(f"/v1/jobs/{i}", headers=AUTH).json()["status"] for i in ids]
    assert statuses.count("running") <= 1 and statuses[-1] == "queued", statuses
    jobs = [wait_for_job(life, i) for i in ids]
    assert [j["status"] for j in jobs] == ["done"] * 3
    for before, after in zip(jobs, jobs[1:], strict=False):
        assert before["finished"] <= after["started"]  # never two at once, first come first served
    wait_until(
        lambda: {f"note-{n}.md" for n in range(3)} <= set(document_ids(life)),
        RELOAD_WITHIN,
        "the notes served",
    )


# --- 4. SIGTERM -----------------------------------------------------------------------------------


def test_sigterm_stops_it_cleanly_and_the_client_then_cannot_reach_it(
    life: Server, workdir: Path, tmp_path: Path
) -> None:
    """Last in this module: it stops the module's server."""
    ensure_indexed(life, workdir)
    assert ragqa(ARMENIA, url=life.base_url, cwd=tmp_path).returncode == 0
    stop_server(life)  # SIGTERM; asserts that the lifespan closed and the process ended in time
    for args in ([ARMENIA], ["--search", ARMENIA], ["--json", ARMENIA]):
        run = ragqa(*args, url=life.base_url, cwd=tmp_path)
        assert run.returncode == 3, (args, run.stdout, run.stderr)
        assert run.stderr.startswith(f"ragqa: cannot reach the ragqa service at {life.base_url}")
        assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
