"""The API's documentation pages (public), served offline: Swagger UI at GET /docs and ReDoc at GET /redoc,
made by FastAPI's own helpers, but loading their script, style and icon from this app instead of a CDN.

The files are those the pinned `fastapi-offline` package ships (Swagger UI's bundle and style, ReDoc's
standalone bundle, FastAPI's icon), served by GET /docs/assets/{name}; nothing is copied into this
repository. ReDoc loads no Google fonts. Each page has its own Content-Security-Policy, which lets it
load and call nothing but this app: on a machine without internet access the pages work the same.

`add_docs(app)` adds the routes to an app built with `docs_url=None, redoc_url=None` (FastAPI's own
pages would load from the CDN)."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

from service.access import public

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"
PACKAGE = "fastapi_offline"  # fastapi-offline, pinned in pyproject.toml
MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
# ReDoc's bundle puts the Redocly logo beside "API docs by Redocly" at the foot of its menu, an image it
# loads from Redocly's CDN: the one outside address either page reaches for. Served with that address
# replaced by an empty data: URL, the image fails at once and ReDoc leaves it out (its own onError).
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
NO_IMAGE = b"data:,"
# Swagger UI's `validatorUrl` defaults to validator.swagger.io, which it may ask for a badge when the
# schema's address is not local (its standalone layout); null: it never does.
SWAGGER_PARAMETERS: dict[str, object] = {"validatorUrl": None}
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """The package's files by name, read once per process (ReDoc's without its outside address)."""
    folder = resources.files(PACKAGE).joinpath("static")
    found = {}
    for name, media_type in MEDIA_TYPES.items():
        body = folder.joinpath(name).read_bytes()
        if name == "redoc.standalone.js":
            if body.count(REDOC_LOGO) != 1:
                raise RuntimeError(f"{PACKAGE}'s {name} no longer loads its logo from {REDOC_LOGO.decode()}")
            body = body.replace(REDOC_LOGO, NO_IMAGE)
        found[name] = Asset(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return found


def policy(html: str, *allow: str) -> dict[str, str]:
    """The headers of a documentation page: a Content-Security-Policy that allows this app's own
    script, the page's inline scripts (by their hashes: no other inline script runs), calls to this
    app only, and `allow`'s directives."""
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
        for script in INLINE_SCRIPT.findall(html)
    )
    directives = [
        "default-src 'none'",
        f"script-src 'self'{hashes}",
        "connect-src 'self'",
        "img-src 'self' data:",
        *allow,
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
    return {
        "Content-Security-Policy": "; ".join(directives),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def with_policy(response: HTMLResponse, *allow: str) -> HTMLResponse:
    """FastAPI's page, with its policy (`policy`)."""
    html = bytes(response.body).decode()
    return HTMLResponse(html, headers=policy(html, *allow))


def add_docs(app: FastAPI) -> None:
    """GET /docs (Swagger UI), its OAuth2 redirect page, GET /redoc (ReDoc) and GET /docs/assets/{name}
    (their files), all public; none of them in the OpenAPI schema."""
    assets()  # a package that no longer has the files fails here, not on a reader's first visit
    openapi_url = app.openapi_url
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    assert openapi_url and oauth2_redirect_url, "the documentation pages need the OpenAPI schema"

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        return with_policy(
            get_swagger_ui_html(
                openapi_url=base + openapi_url,
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=base + oauth2_redirect_url,
                init_oauth=app.swagger_ui_init_oauth,
                swagger_js_url=f"{base}{ASSETS_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{base}{ASSETS_URL}/swagger-ui.css",
                swagger_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
                swagger_ui_parameters={**SWAGGER_PARAMETERS, **(app.swagger_ui_parameters or {})},
            ),
            "style-src 'self'",
        )

    async def swagger_ui_redirect() -> HTMLResponse:
        return with_policy(get_swagger_ui_oauth2_redirect_html())

    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return with_policy(
            get_redoc_html(
                openapi_url=base + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{base}{ASSETS_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{base}{ASSETS_URL}/favicon.png",
                with_google_fonts=False,
            ),
            # ReDoc styles itself with <style> elements it writes (styled-components), and runs its
            # search index in a worker made from a blob: URL of its own code.
            "style-src 'self' 'unsafe-inline'",
            "worker-src blob:",
        )

    async def asset(name: str, request: Request) -> Response:
        found = assets().get(name)
        if found is None:
            raise HTTPException(404, f"no documentation asset {name!r}")
        # Revalidated on each visit (cheap: 304), so that a new package version is never mixed with
        # pages that expect another.
        headers = {"ETag": found.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)

    public_only = [Depends(public)]
    for path, endpoint in (
        (DOCS_URL, swagger_ui),
        (oauth2_redirect_url, swagger_ui_redirect),
        (REDOC_URL, redoc),
        (ASSETS_URL + "/{name}", asset),
    ):
        app.add_api_route(path, endpoint, methods=["GET"], dependencies=public_only, include_in_schema=False)
