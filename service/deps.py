"""The routes' dependencies, each declared once with an `Annotated` alias to use in a signature.

All of them read from `request.app.state` (never a module global), so a test can swap any one with
`app.dependency_overrides[get_x] = ...`: `settings` and `metrics` are put there by `create_app`,
`runtime` by the app's lifespan (service/runtime.py). Who may call a route is in service/access.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.config import ServiceSettings
from service.holder import IndexHolder, NotReadyError
from service.index import LoadedIndex
from service.metrics import Metrics
from service.qa import QAService
from service.runtime import Runtime
from service.writes import Jobs

# The dependencies are coroutines: FastAPI would run a plain function in its thread pool, a thread
# hop per dependency per request for a lookup.


async def get_settings(request: Request) -> ServiceSettings:
    settings: ServiceSettings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    """The app's metrics, which exist before the runtime does (the middleware counts into them)."""
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReadyError(
            "the service has not started: its lifespan builds the runtime (without the lifespan, set "
            "app.state.runtime or override service.deps.get_runtime)"
        )
    return runtime


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_qa(runtime: RuntimeDep) -> QAService:
    return runtime.qa


async def get_jobs(runtime: RuntimeDep) -> Jobs:
    return runtime.jobs


async def get_holder(runtime: RuntimeDep) -> IndexHolder:
    return runtime.holder


QADep = Annotated[QAService, Depends(get_qa)]
JobsDep = Annotated[Jobs, Depends(get_jobs)]
HolderDep = Annotated[IndexHolder, Depends(get_holder)]


async def get_index(holder: HolderDep) -> LoadedIndex:
    """The index version served now; the request keeps this version to its end. 503 while none is
    loaded (NotReadyError)."""
    return holder.current


IndexDep = Annotated[LoadedIndex, Depends(get_index)]
