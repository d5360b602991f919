"""Operations (public): GET /healthz (the process answers), GET /readyz (an index is loaded: the
service can answer) and GET /metrics (Prometheus)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.access import public
from service.deps import HolderDep, MetricsDep
from service.schemas import ErrorResponse

router = APIRouter(dependencies=[Depends(public)])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
async def readyz(holder: HolderDep) -> Any:
    if not holder.ready:
        return JSONResponse(
            {"error": f"not ready: {holder.last_error or 'no index loaded'}"}, status_code=503
        )
    return {"status": "ready", "index_version": holder.current.version_id}


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(metrics: MetricsDep, holder: HolderDep) -> Response:
    if holder.ready:  # the index gauges are read at scrape time, not on every request
        index = holder.current
        metrics.set_index(index.version_id, index.model_name, index.document_count, index.chunk_count)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
