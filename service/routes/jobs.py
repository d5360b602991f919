"""Index jobs (write access): GET /v1/jobs/{job_id}, the state of a job an upload or a delete started."""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.access import write_access
from service.deps import JobsDep
from service.errors import WRITE_ERRORS
from service.schemas import ErrorResponse, JobStatus

router = APIRouter(dependencies=[Depends(write_access)])


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobStatus,
    responses={
        **WRITE_ERRORS,
        404: {"model": ErrorResponse},
        503: {"model": ErrorResponse, "description": "the job records cannot be read"},
    },
)
async def job_status(job_id: str, jobs: JobsDep) -> JobStatus | JSONResponse:
    """An index job: queued, running, done (with the indexer's report) or failed (with why). Job records
    are kept in the store folder: a job submitted before a restart of the service is found too."""
    try:
        job = jobs.get(job_id)
    except sqlite3.Error as exc:
        return JSONResponse({"error": f"the job records cannot be read: {exc}"}, status_code=503)
    if job is None:
        return JSONResponse({"error": f"no job with id {job_id!r}"}, status_code=404)
    return JobStatus(**vars(job))
