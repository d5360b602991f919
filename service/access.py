"""Who may call what. Every route declares one of three access levels as a dependency (the routers
of service/routes/ declare it for all their routes), and `route_access` refuses to build an app with
a route that declares none of them, or several."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Mount

from service import writes
from service.deps import SettingsDep


def public() -> None:
    """Open to everyone."""


def read_access(request: Request, settings: SettingsDep) -> None:
    """Open, unless RAGQA_READ_REQUIRES_KEY=true: then an API key is needed."""
    if settings.read_requires_key:
        writes.check_key(settings, request, "reading")


def write_access(request: Request, settings: SettingsDep) -> None:
    """Always an API key (RAGQA_API_KEYS); without configured keys the route is disabled (403)."""
    writes.check_key(settings, request, "the write API")


ACCESS = {public: "public", read_access: "read", write_access: "write"}


def route_access(app: FastAPI) -> dict[str, str]:
    """ "METHODS path" → public | read | write for every route; a RuntimeError names any route that
    declares none (or several) of the three."""
    fastapi_own = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    found: dict[str, str] = {}
    unmarked = []
    # Included routers are nodes of a tree in app.routes (FastAPI ≥ 0.137): iter_route_contexts
    # gives each route as served, with its full path and the dependencies of every level above it.
    for route in iter_route_contexts(app.routes):
        path = route.path or repr(route.original_route)
        name = f"{','.join(sorted(route.methods or ['*']))} {path}"
        if isinstance(route.original_route, APIRoute):
            levels = {ACCESS[d.call] for d in route.dependant.dependencies if d.call in ACCESS}
            if len(levels) == 1:
                found[name] = levels.pop()
                continue
        elif path in fastapi_own or (isinstance(route.original_route, Mount) and path == "/static"):
            found[name] = "public"  # the API's documentation, and the chat page's own assets
            continue
        unmarked.append(name)
    if unmarked:
        raise RuntimeError(f"routes that are neither keyed nor explicitly public: {', '.join(unmarked)}")
    return found
