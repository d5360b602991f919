"""The write API's parts: API keys, safe uploads into the corpus folder, and index jobs.

An index job runs the indexer's command line (`ragqa-index CORPUS --store STORE --json`) in a
subprocess, one job at a time (the others wait in order). The service's hot reload then serves the
version it publishes. A subprocess keeps the indexer's model work off the service's own model thread,
and a crash in a job cannot take the service down. Job records are kept in SQLite in the store folder
and outlive the service; no indexer outlives it (class Jobs)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import sqlite3
import sys
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import HTTPException, Request

from indexer.documents import SUPPORTED_SUFFIXES
from service.config import ServiceSettings

MAX_JOBS_KEPT = 1000
UNSAFE = re.compile(r"[^\w.\- ()+,@&=]")


# --- keys ------------------------------------------------------------------------------------------


def key_of(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def check_key(settings: ServiceSettings, request: Request, purpose: str) -> None:
    """401 without a valid key; 403 when no keys are configured (the routes are then disabled)."""
    keys = settings.api_key_list
    if not keys:
        raise HTTPException(403, f"{purpose} is disabled: no API keys are configured (RAGQA_API_KEYS)")
    given = key_of(request)
    if given is None:
        raise HTTPException(
            401, "an API key is required: Authorization: Bearer KEY", {"WWW-Authenticate": "Bearer"}
        )
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise HTTPException(401, "the API key is not valid", {"WWW-Authenticate": "Bearer"})


# --- uploads ---------------------------------------------------------------------------------------


class UploadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def safe_name(raw: str | None) -> str:
    """The name to store an upload under, inside the corpus folder; an UploadError for a name that
    holds a folder, a NUL byte or an unsupported type. Names are never rewritten into something that
    could point elsewhere: a name with a path in it is refused, not trimmed."""
    if not raw:
        raise UploadError(400, "every file needs a name")
    if "\x00" in raw:
        raise UploadError(400, "a file name may not contain a NUL byte")
    if "/" in raw or "\\" in raw or raw in (".", ".."):
        raise UploadError(400, f"a file name may not contain a folder: {raw!r}")
    name = UNSAFE.sub("_", raw).strip()
    if not name or name.startswith("."):
        raise UploadError(400, f"a file name may not be empty or start with a dot: {raw!r}")
    if len(name.encode("utf-8")) > 200:
        raise UploadError(400, "a file name may be at most 200 bytes long")
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        supported = " ".join(sorted(SUPPORTED_SUFFIXES))
        raise UploadError(415, f"{raw!r}: unsupported file type {suffix or '(none)'}; supported: {supported}")
    return name


def inside(folder: Path, name: str) -> Path:
    """`folder / name`, checked to be inside `folder` once resolved (no link may lead out)."""
    root = folder.resolve()
    target = (root / name).resolve()
    if target.parent != root:
        raise UploadError(400, f"{name!r} would be stored outside the corpus folder")
    return target


# --- jobs ------------------------------------------------------------------------------------------

# In the local store folder, outside the folders the indexer's garbage collection sweeps (segments/,
# tombstones/, commits/, versions/: indexer/segments.py collect_garbage).
JOBS_FILE = "jobs.sqlite3"
STOP_GRACE = 3.0  # seconds an indexer has to exit after SIGTERM before it is killed
STOPPED = "stopped with the service"
INTERRUPTED = "the service stopped while this job ran"
PR_SET_PDEATHSIG = 1

# The indexer's subprocess runs this (`python -c CHILD PARENT_PID ARGS...`) rather than `-m indexer.cli`:
# on Linux it first asks the kernel to SIGKILL it when the service that started it dies, so that even
# a service killed without its shutdown (SIGKILL, a crash, the OOM killer) leaves no indexer behind;
# a service that is already gone when it gets there (its parent pid changed) ends it at once. The
# indexer is crash-safe: a killed run leaves the previous version live.
CHILD = f"""\
import os, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL)
if os.getppid() != int(sys.argv.pop(1)):
    sys.exit("ragqa-index: the service that started this index job has stopped")
from indexer.cli import main
sys.exit(main(sys.argv[1:]))
"""

log = logging.getLogger("ragqa.service")


@dataclass
class Job:
    job_id: str
    action: str
    files: list[str]
    status: Literal["queued", "running", "done", "failed"] = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    report: dict[str, Any] | None = None
    error: str | None = None


def stopped_reason(job: Job, how: str) -> str:
    """Why a job failed when the service stopped under it, and what became of its change."""
    then = "the next index job (or ragqa-index)"
    if job.action == "delete":
        return f"{how}; the file stays removed from the corpus folder: {then} drops it from the index"
    return f"{how}; its files are kept in the corpus folder: {then} indexes them"


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order the jobs came in, which is the order they run
    job_id TEXT NOT NULL UNIQUE,
    action TEXT NOT NULL,
    files TEXT NOT NULL,                    -- a JSON list
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    created REAL NOT NULL,                  -- seconds since the epoch, as the API gives them
    started REAL,
    finished REAL,
    report TEXT,                            -- the indexer's JSON report
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
PRAGMA user_version = 1;
"""
COLUMNS = "job_id, action, files, status, created, started, finished, report, error"


class JobStore:
    """Job records in SQLite (`<local store>/jobs.sqlite3`, WAL mode): one connection, guarded by a
    lock (the event loop's thread uses it; an in-process test client's loop runs on a thread of its
    own). The file is made by the first job, so a service that runs none writes nothing into the
    store; a file SQLite cannot read is moved aside (`jobs.sqlite3.damaged-<time>`, logged) and a new
    one started, so that it never keeps the service from serving. One service writes a store's jobs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        """The connection (the caller holds the lock); None while there is no file and `create` is false."""
        if self._db is None:
            if not create and not self.path.exists():
                return None
            try:
                self._db = self._open()
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorname", None) not in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                    raise  # e.g. a read-only folder: nothing wrong with the file itself
                aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
                log.error(
                    "jobs.damaged", extra={"path": str(self.path), "moved_to": str(aside), "why": str(exc)}
                )
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                self._db = self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def add(self, job: Job, keep: int) -> None:
        """Record a new job, then drop the finished jobs older than the newest `keep` (unfinished ones
        are never dropped)."""
        with self._lock:
            db = self._connect(create=True)
            assert db is not None
            with db:
                db.execute(f"INSERT INTO jobs ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _row(job))
                _prune(db, keep)

    def save(self, job: Job) -> None:
        """Record a job's new state (status, times, report, error)."""
        with self._lock:
            db = self._connect(create=True)
            assert db is not None
            with db:
                db.execute(
                    "UPDATE jobs SET status = ?, started = ?, finished = ?, report = ?, error = ? "
                    "WHERE job_id = ?",
                    (job.status, job.started, job.finished, _report(job), job.error, job.job_id),
                )

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            db = self._connect(create=False)
            if db is None:
                return None
            row = db.execute(f"SELECT {COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def unfinished(self) -> list[Job]:
        """The queued and running jobs, in the order they came."""
        with self._lock:
            db = self._connect(create=False)
            if db is None:
                return []
            rows = db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq"
            ).fetchall()
        return [_job(row) for row in rows]

    def prune(self, keep: int) -> None:
        with self._lock:
            db = self._connect(create=False)
            if db is not None:
                with db:
                    _prune(db, keep)

    def count(self) -> int:
        with self._lock:
            db = self._connect(create=False)
            return 0 if db is None else int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _report(job: Job) -> str | None:
    return None if job.report is None else json.dumps(job.report, ensure_ascii=False)


def _row(job: Job) -> tuple[Any, ...]:
    files = json.dumps(job.files, ensure_ascii=False)
    return (
        job.job_id,
        job.action,
        files,
        job.status,
        job.created,
        job.started,
        job.finished,
        _report(job),
        job.error,
    )


def _job(row: tuple[Any, ...]) -> Job:
    job_id, action, files, status, created, started, finished, report, error = row
    report = None if report is None else json.loads(report)
    return Job(job_id, action, json.loads(files), status, created, started, finished, report, error)


def _prune(db: sqlite3.Connection, keep: int) -> None:
    db.execute(
        "DELETE FROM jobs WHERE status IN ('done', 'failed') "
        "AND seq <= (SELECT seq FROM jobs ORDER BY seq DESC LIMIT 1 OFFSET ?)",
        (keep,),
    )


class Jobs:
    """Index jobs, run one at a time in the order they came, their records kept in a JobStore in the
    local store folder (`IndexSettings.local_store`: the store, or with Milvus RAGQA_WORK_STORE), so
    that GET /v1/jobs/{id} answers after a restart too; the newest MAX_JOBS_KEPT are kept.

    On start (`recover`): a job recorded as `running` was cut short by a service that stopped without
    its shutdown (SIGKILL, a crash, a power cut); it is marked `failed` with the reason (INTERRUPTED),
    not run again: a job that may have been what brought the service down must not do it at every
    start. `queued` jobs never ran: they are run, in the order they came, before the jobs submitted
    since (their files are on disk, and each job indexes the whole corpus folder as it is then).

    On stop (`stop`, the service's shutdown): the running job's indexer gets SIGTERM, then SIGKILL
    after STOP_GRACE seconds, and is waited for (the shutdown takes at most that much longer; a
    killed run leaves the previous version live), and the job is marked `failed` (STOPPED); queued
    jobs stay queued for the next start. The indexer runs in a session of its own, so a terminal's
    Ctrl-C reaches only the service, which ends it; and (CHILD) it dies with the service if the
    service is killed without its shutdown."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.records = JobStore(settings.local_store / JOBS_FILE)
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.recover()
        self.worker = asyncio.get_running_loop().create_task(self._work())

    def recover(self) -> list[Job]:
        """What a start does first: jobs a stopped service left `running` are marked `failed`, the
        `queued` ones are queued again in order (returned), old finished ones are pruned. Records that
        cannot be read are logged, and the service starts all the same."""
        resumed = []
        try:
            unfinished = self.records.unfinished()
        except (sqlite3.Error, OSError) as exc:
            log.error("jobs.unreadable", extra={"path": str(self.records.path), "why": str(exc)})
            return []
        for job in unfinished:
            if job.status == "running":
                job.status, job.finished, job.error = "failed", time.time(), stopped_reason(job, INTERRUPTED)
                self._save(job)
                log.warning("job.interrupted", extra={"job_id": job.job_id, "action": job.action})
            else:
                self.queue.put_nowait(job)
                resumed.append(job)
        if resumed:
            log.info("jobs.resumed", extra={"job_ids": [job.job_id for job in resumed]})
        with suppress(sqlite3.Error, OSError):
            self.records.prune(MAX_JOBS_KEPT)
        return resumed

    async def stop(self) -> None:
        """End the running job (its indexer terminated and waited for, the job marked failed) and the
        worker; close the records."""
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)
            self.worker = None
        self.records.close()

    def get(self, job_id: str) -> Job | None:
        return self.records.get(job_id)

    def submit(self, action: str, files: list[str]) -> Job:
        job = Job(uuid.uuid4().hex, action, files)
        try:
            self.records.add(job, MAX_JOBS_KEPT)
        except (sqlite3.Error, OSError) as exc:
            log.error("jobs.unrecorded", extra={"path": str(self.records.path), "why": str(exc)})
            raise HTTPException(
                503,
                f"the index job could not be recorded in {self.records.path} ({exc}); the corpus folder "
                "holds the change, which the next index job or ragqa-index indexes",
            ) from exc
        self.queue.put_nowait(job)
        return job

    def _save(self, job: Job) -> None:
        """Record the job's state; a store that cannot be written is logged, and the worker goes on."""
        try:
            self.records.save(job)
        except (sqlite3.Error, OSError) as exc:
            log.error("jobs.unrecorded", extra={"job_id": job.job_id, "status": job.status, "why": str(exc)})

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            job.status, job.started = "running", time.time()
            self._save(job)
            try:
                job.report = await self._index()
                job.status = "done"
            except asyncio.CancelledError:  # the service stops: _index ended the indexer
                job.status, job.error = "failed", stopped_reason(job, STOPPED)
                log.warning("job.stopped", extra={"job_id": job.job_id, "action": job.action})
                raise
            except Exception as exc:  # the job fails, the worker goes on
                job.status, job.error = "failed", str(exc)
            finally:
                job.finished = time.time()
                self._save(job)

    async def _index(self) -> dict[str, Any]:
        corpus, store = self.settings.corpus, self.settings.store
        arguments = [str(corpus), "--store", str(store), "--json", "--wait", "600"]
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-c", CHILD, str(os.getpid()), *arguments],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "RAGQA_MODEL": self.settings.model},
            start_new_session=True,
        )
        try:
            out, err = await process.communicate()
        except asyncio.CancelledError:
            await end(process)
            raise
        lines = out.decode("utf-8", "replace").strip().splitlines()
        if process.returncode != 0:
            reason = err.decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(reason[-1] if reason else f"the indexer exited with code {process.returncode}")
        return json.loads(lines[-1])  # type: ignore[no-any-return]


async def end(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, SIGKILL if it has not exited after STOP_GRACE seconds (or if this is cancelled on the
    way), and wait until it has exited."""
    try:
        with suppress(ProcessLookupError):
            process.terminate()
        with suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), STOP_GRACE)
    finally:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.kill()
    await process.wait()
