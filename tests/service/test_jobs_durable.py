"""Index jobs outlive the service that ran them, and no indexer outlives the service.

In process (tier `unit`): the job records (service.writes.JobStore, SQLite in the store folder) read
back by a new store object as they were written; pruning keeps the newest and every unfinished job; a
start after a stop marks the jobs left `running` failed and queues the `queued` ones again, in order;
a damaged record file is moved aside; a service that runs no job writes nothing into the store; and
GET /v1/jobs/{id} answers a record an earlier service wrote.

Real servers (tier `slow`: each is `python -m service.cli` loading the model, and each job an
indexer subprocess loading it too), started and stopped on one store and corpus folder:

1. a finished job and its report answer the same after a restart;
2. SIGTERM while a job runs: the server ends its indexer (none is left once the server has exited),
   the job is `failed` ("stopped with the service"), the job queued behind it runs after the restart;
3. SIGKILL while a job runs (no shutdown at all): the indexer dies with the server, and the next start
   marks the job `failed` ("the service stopped while this job ran").

The slow tests run in this order, each on the store the one before left."""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Literal

import psutil
import pytest

from service.config import ServiceSettings
from service.processes import stop_process
from service.writes import INTERRUPTED, JOBS_FILE, STOPPED, Job, Jobs, JobStore
from tests.service.conftest import (
    AUTH,
    KEY,
    Server,
    bare_app,
    corpus_workdir,
    start_server,
    stop_server,
    wait_until,
)
from tests.service.test_lifecycle import RELOAD_WITHIN, wait_for_job

OKAPI = "# Okapi\n\nThe okapi is a forest giraffe that lives in the Ituri rainforest of the Congo.\n"


def finished(
    job_id: str, status: Literal["done", "failed"] = "done", report: dict[str, Any] | None = None
) -> Job:
    return Job(job_id, "upload", [f"{job_id}.md"], status, 1.0, 2.0, 3.0, report)


# --- the records, in process ---------------------------------------------------------------------


@pytest.mark.unit
def test_records_read_back_as_written_by_another_store_object(tmp_path: Path) -> None:
    path = tmp_path / "store" / JOBS_FILE
    records = JobStore(path)
    job = Job("j1", "upload", ["notes.md", "minutes.txt"])
    records.add(job, keep=10)
    job.status, job.started, job.finished = "done", job.created + 1, job.created + 2
    job.report = {"version": "20261204T000000Z", "documents": 2, "skipped": [{"path": "x", "reason": "é"}]}
    records.save(job)
    records.close()

    again = JobStore(path)  # as a restarted service opens it
    assert again.get("j1") == job
    assert again.get("no-such-job") is None
    again.close()
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.unit
def test_pruning_keeps_the_newest_jobs_and_every_unfinished_one(tmp_path: Path) -> None:
    records = JobStore(tmp_path / JOBS_FILE)
    for n in range(3):
        records.add(Job(f"old-queued-{n}", "upload", ["a.md"]), keep=5)
    records.add(Job("old-running", "delete", ["b.md"], "running"), keep=5)
    for n in range(10):
        records.add(finished(f"done-{n}", "failed" if n % 2 else "done"), keep=5)
    kept = {f"old-queued-{n}" for n in range(3)} | {"old-running"} | {f"done-{n}" for n in range(5, 10)}
    assert records.count() == len(kept)
    assert all(records.get(job_id) is not None for job_id in kept)
    assert all(records.get(f"done-{n}") is None for n in range(5))


@pytest.mark.unit
def test_a_start_fails_jobs_left_running_and_queues_queued_ones_in_order(tmp_path: Path) -> None:
    settings = ServiceSettings(store=str(tmp_path / "store"), corpus=tmp_path / "corpus")
    before = Jobs(settings)  # the service that stopped: its worker never ran
    done = before.submit("upload", ["a.md"])
    cut_short = before.submit("delete", ["b.md"])
    first, second = before.submit("upload", ["c.md"]), before.submit("upload", ["d.md"])
    done.status, done.report = "done", {"version": "v1"}
    cut_short.status, cut_short.started = "running", cut_short.created
    for job in (done, cut_short):
        before.records.save(job)
    before.records.close()

    after = Jobs(settings)
    assert [job.job_id for job in after.recover()] == [first.job_id, second.job_id]
    assert [after.queue.get_nowait().job_id for _ in range(2)] == [first.job_id, second.job_id]
    assert after.queue.empty()
    failed = after.get(cut_short.job_id)
    assert failed is not None and failed.status == "failed" and failed.finished is not None
    assert failed.error is not None and failed.error.startswith(INTERRUPTED)
    assert "corpus folder" in failed.error and "ragqa-index" in failed.error
    assert after.get(done.job_id) == done
    assert after.get(first.job_id) == first  # still queued, as it was recorded


@pytest.mark.unit
def test_a_service_that_runs_no_job_writes_nothing_into_the_store(tmp_path: Path) -> None:
    jobs = Jobs(ServiceSettings(store=str(tmp_path / "store")))
    assert jobs.recover() == [] and jobs.get("anything") is None
    assert not (tmp_path / "store").exists()


@pytest.mark.unit
def test_a_damaged_record_file_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / JOBS_FILE
    path.write_bytes(b"not a database at all, but not empty either" * 100)
    records = JobStore(path)
    assert records.get("anything") is None
    records.add(Job("j1", "upload", ["a.md"]), keep=10)
    assert records.get("j1") is not None
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{JOBS_FILE}.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"not a database")


@pytest.mark.unit
def test_the_route_answers_a_record_an_earlier_service_wrote(tmp_path: Path) -> None:
    store = tmp_path / "store"
    job = finished("a" * 32, report={"version": "v1", "documents": 2, "published": True})
    earlier = JobStore(store / JOBS_FILE)
    earlier.add(job, keep=10)
    earlier.close()
    with bare_app(store, api_keys=KEY, corpus=tmp_path / "corpus") as app:
        response = app.client.get(f"/v1/jobs/{job.job_id}", headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json() == vars(job)
        assert app.client.get("/v1/jobs/" + "b" * 32, headers=AUTH).status_code == 404
    assert not app.model.loaded


# --- real servers stopped and started ------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus_workdir(tmp_path_factory, "durable-jobs")


@contextmanager
def serving(workdir: Path, name: str) -> Iterator[Server]:
    """A real server on the module's store and corpus folder, with keys; stopped (if a test has not
    stopped or killed it) on exit."""
    server = start_server(
        workdir / "store", workdir / f"{name}.log", api_keys=KEY, corpus=str(workdir / "corpus")
    )
    try:
        yield server
    finally:
        server.client.close()
        stop_process(server.running)


def upload(server: Server, name: str, text: str) -> str:
    response = server.client.post("/v1/documents", files={"files": (name, text.encode())}, headers=AUTH)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def job_of(server: Server, job_id: str) -> dict[str, Any]:
    response = server.client.get(f"/v1/jobs/{job_id}", headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def long_document(title: str, seed: int, sentences: int = 1500) -> str:
    """A document of distinct sentences (none is in the embedding cache), which takes the indexer
    seconds to embed: a job that is still running when the test stops the server."""
    rng = random.Random(seed)
    animals = ["heron", "otter", "lynx", "badger", "kestrel", "newt", "marten", "plover"]
    places = ["the north marsh", "the old quarry", "the river bend", "the beech wood", "the dunes"]
    lines = [f"# {title}\n"]
    for n in range(sentences):
        lines.append(
            f"On survey day {n} the warden saw {rng.randint(2, 999)} {rng.choice(animals)}s near "
            f"{rng.choice(places)} at {rng.randint(0, 23)}:{rng.randint(0, 59):02d}, in {title.lower()}."
            + ("\n\n" if n % 12 == 11 else " ")
        )
    return "".join(lines)


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def running_indexer(server: Server, job_id: str) -> psutil.Process:
    """The server's indexer subprocess, once the job runs and its indexer has started."""
    found: list[psutil.Process] = []

    def started() -> bool:
        if job_of(server, job_id)["status"] != "running":
            return False
        children = psutil.Process(server.process.pid).children(recursive=True)
        found[:] = [p for p in children if "indexer.cli" in " ".join(cmdline(p))]
        return len(found) == 1

    wait_until(started, 60, f"job {job_id} running its indexer")
    return found[0]


def cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def served_version(server: Server) -> str | None:
    response = server.client.get("/readyz")
    return response.json()["index_version"] if response.status_code == 200 else None


def indexers_of(store: Path) -> list[psutil.Process]:
    """Live indexer processes writing this store, whoever started them."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if "indexer.cli" in line and str(store) in line and alive(process):
            found.append(process)
    return found


def recorded(store: Path, job_id: str) -> dict[str, Any]:
    """A job's row as the stopped server left it, read with sqlite3 itself."""
    with closing(sqlite3.connect(store / JOBS_FILE)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    assert row is not None, job_id
    return dict(row)


@pytest.mark.slow
def test_a_finished_job_and_its_report_outlive_a_restart(workdir: Path) -> None:
    with serving(workdir, "first") as server:
        job_id = upload(server, "okapi.md", OKAPI)
        before = wait_for_job(server, job_id)
        assert before["status"] == "done", before
        assert before["report"]["published"] is True and before["report"]["documents"] == 2
        stop_server(server)
    assert (workdir / "store" / JOBS_FILE).is_file()  # beside the segments: no index run removed it
    with serving(workdir, "second") as server:
        assert job_of(server, job_id) == before
        ready = server.wait_for("/readyz", timeout=RELOAD_WITHIN).json()
        assert ready["index_version"] == before["report"]["version"]


@pytest.mark.slow
def test_sigterm_mid_job_ends_its_indexer_fails_the_job_and_the_queued_one_runs_after(
    workdir: Path,
) -> None:
    store = workdir / "store"
    with serving(workdir, "third") as server:
        cut_short = upload(server, "wardens-log.md", long_document("The wardens' log", seed=1))
        queued = upload(server, "note.md", "# Note\n\nThe heron survey resumes in spring.\n")
        indexer = running_indexer(server, cut_short)
        assert os.getsid(indexer.pid) == indexer.pid  # a session of its own: no terminal signal reaches it
        assert job_of(server, queued)["status"] == "queued"
        stop_server(server)  # SIGTERM; asserts a clean shutdown within 20 s
        assert not alive(indexer), "the indexer outlived the server"
    assert indexers_of(store) == []
    stopped = recorded(store, cut_short)
    assert stopped["status"] == "failed" and stopped["error"].startswith(STOPPED), stopped
    assert stopped["report"] is None and stopped["finished"] >= stopped["started"]
    assert recorded(store, queued)["status"] == "queued"  # it never ran: kept for the next start

    with serving(workdir, "fourth") as server:
        failed = job_of(server, cut_short)
        assert failed["status"] == "failed" and failed["error"] == stopped["error"]
        resumed = wait_for_job(server, queued)
        assert resumed["status"] == "done", resumed
        assert resumed["started"] >= failed["finished"]
        # The resumed job indexes the corpus folder as it is: the stopped job's file too.
        files = [p for p in (workdir / "corpus").iterdir() if not p.name.startswith(".")]
        assert resumed["report"]["documents"] == len(files) and resumed["report"]["published"] is True

        def served() -> set[str]:
            return {d["doc_id"] for d in server.client.get("/v1/documents").json()["documents"]}

        wait_until(lambda: {"wardens-log.md", "note.md"} <= served(), RELOAD_WITHIN, "both files served")


@pytest.mark.slow
def test_sigkill_mid_job_takes_its_indexer_down_too_and_the_next_start_fails_the_job(workdir: Path) -> None:
    store = workdir / "store"
    with serving(workdir, "fifth") as server:
        if (store / "CURRENT").exists():  # the tests before published a version
            server.wait_for("/readyz")
        live = served_version(server)
        job_id = upload(server, "second-log.md", long_document("The second log", seed=2))
        indexer = running_indexer(server, job_id)
        server.process.kill()  # no shutdown at all: what a crash or the OOM killer does
        server.process.wait()
        wait_until(lambda: not alive(indexer), 10, "the indexer ended with its server")
    assert indexers_of(store) == []
    assert recorded(store, job_id)["status"] == "running"  # as the killed server left it

    with serving(workdir, "sixth") as server:
        failed = job_of(server, job_id)
        assert failed["status"] == "failed" and failed["error"].startswith(INTERRUPTED), failed
        assert "corpus folder" in failed["error"] and failed["report"] is None
        assert failed["finished"] is not None and failed["finished"] >= failed["started"]
        # The killed run published nothing: the version before it is live.
        if live is not None:
            server.wait_for("/readyz")
        assert served_version(server) == live
