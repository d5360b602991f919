"""The write API's parts: API keys, safe uploads into the corpus folder, and index jobs.

An index job runs `python -m indexer.cli CORPUS --store STORE --json` in a subprocess, one job at a
time (the others wait in order). The service's hot reload then serves the version it publishes. A
subprocess keeps the indexer's model work off the service's own model thread, and a crash in a job
cannot take the service down."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import sys
import time
import uuid
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


class Jobs:
    """Index jobs, run one at a time in the order they came."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.jobs: dict[str, Job] = {}
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)

    def submit(self, action: str, files: list[str]) -> Job:
        job = Job(uuid.uuid4().hex, action, files)
        self.jobs[job.job_id] = job
        while len(self.jobs) > MAX_JOBS_KEPT:
            oldest = next(iter(self.jobs))
            if self.jobs[oldest].status in ("queued", "running"):
                break
            del self.jobs[oldest]
        self.queue.put_nowait(job)
        return job

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            job.status, job.started = "running", time.time()
            try:
                job.report = await self._index()
                job.status = "done"
            except Exception as exc:  # the job fails, the worker goes on
                job.status, job.error = "failed", str(exc)
            finally:
                job.finished = time.time()

    async def _index(self) -> dict[str, Any]:
        corpus, store = self.settings.corpus, self.settings.store
        command = [sys.executable, "-m", "indexer.cli", str(corpus), "--store", str(store), "--json"]
        command += ["--wait", "600"]
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "RAGQA_MODEL": self.settings.model},
        )
        out, err = await process.communicate()
        lines = out.decode("utf-8", "replace").strip().splitlines()
        if process.returncode != 0:
            reason = err.decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(reason[-1] if reason else f"the indexer exited with code {process.returncode}")
        return json.loads(lines[-1])  # type: ignore[no-any-return]
