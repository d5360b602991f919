"""The API's documentation pages offline (service/docs.py): Swagger UI at /docs and ReDoc at /redoc load
their script, style and icon from the app itself, and nothing from anywhere else.

- In process (`unit`): the real app (create_app, no lifespan: the pages need no index) answers the
  pages, whose every asset URL is the app's own and answers 200 with its type, under a policy that
  allows nothing but the app and the page's own inline script.
- In a real browser (`slow`): Debian's chromium, driven by Playwright, against the session's real
  server (conftest's `server`) on 127.0.0.1, with every request to another host aborted and recorded.
  Both pages render every operation of the API's schema and work (Swagger UI's "Try it out" calls the
  API, ReDoc's search finds an operation), and nothing outside was even asked for."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import expect

from service.access import route_access
from service.app import create_app
from service.config import ServiceSettings
from service.docs import NO_IMAGE, REDOC_LOGO
from tests.service.conftest import CHROMIUM, Server, chromium

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="needs Debian's chromium (apt-get install chromium); CI installs it and runs this",
)
PACKAGE = resources.files("fastapi_offline").joinpath("static")
# page → the assets it names (all from the app; besides them, it names only /openapi.json)
PAGES = {
    "/docs": ["/docs/assets/swagger-ui.css", "/docs/assets/favicon.png", "/docs/assets/swagger-ui-bundle.js"],
    "/redoc": ["/docs/assets/favicon.png", "/docs/assets/redoc.standalone.js"],
}
ASSETS = {  # asset → its content type, and a string only the real file has
    "/docs/assets/swagger-ui-bundle.js": ("text/javascript", "SwaggerUIBundle"),
    "/docs/assets/swagger-ui.css": ("text/css", ".swagger-ui"),
    "/docs/assets/redoc.standalone.js": ("text/javascript", "Redoc"),
    "/docs/assets/favicon.png": ("image/png", "PNG"),
}
URL = re.compile(r"""(?:src|href|spec-url)="([^"]*)"|\burl: '([^']*)'""")
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def sources(policy: str) -> dict[str, list[str]]:
    """A Content-Security-Policy as directive → its sources."""
    directives = [d.split() for d in policy.split(";") if d.strip()]
    return {d[0]: d[1:] for d in directives}


def sha256(script: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"


# --- in process ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """The real app without its lifespan: no index, no model; the documentation needs neither."""
    return TestClient(create_app(ServiceSettings(store=tmp_path_factory.mktemp("docs") / "store")))


@pytest.mark.unit
@pytest.mark.parametrize("path", PAGES)
def test_the_pages_load_only_the_apps_own_assets(bare: TestClient, path: str) -> None:
    page = bare.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?:|//", page.text), "a page names another host (a CDN, Google fonts)"
    urls = [a or b for a, b in URL.findall(page.text)]
    assert set(urls) == {*PAGES[path], "/openapi.json"}
    for url in PAGES[path]:
        asset = bare.get(url)
        content_type, marker = ASSETS[url]
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].startswith(content_type), url
        assert marker.encode() in asset.content, url
    assert bare.get("/openapi.json").status_code == 200


@pytest.mark.unit
@pytest.mark.parametrize("path", [*PAGES, "/docs/oauth2-redirect"])
def test_each_page_may_load_and_call_nothing_but_the_app(bare: TestClient, path: str) -> None:
    """Only 'self', data: images, ReDoc's blob: worker, and the page's own inline scripts by hash
    (Swagger UI is started by one): no host, no wildcard, no inline script but those, no eval."""
    page = bare.get(path)
    policy = sources(page.headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    allowed = {"'self'", "'none'", "data:", "blob:", "'unsafe-inline'"}
    for directive, values in policy.items():
        for value in values:
            assert value in allowed or value.startswith("'sha256-"), f"{directive} {value}"
    inline = INLINE_SCRIPT.findall(page.text)
    assert policy["script-src"] == ["'self'", *map(sha256, inline)]
    assert len(inline) == (0 if path == "/redoc" else 1)
    assert policy["connect-src"] == ["'self'"]
    if path != "/redoc":  # ReDoc writes its own <style> elements
        assert "'unsafe-inline'" not in policy.get("style-src", [])
    assert page.headers["x-content-type-options"] == "nosniff"


@pytest.mark.unit
def test_the_assets_are_the_packages_files_and_redoc_loads_no_outside_logo(bare: TestClient) -> None:
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        assert bare.get(f"/docs/assets/{name}").content == PACKAGE.joinpath(name).read_bytes(), name
    original = PACKAGE.joinpath("redoc.standalone.js").read_bytes()
    served = bare.get("/docs/assets/redoc.standalone.js").content
    assert b"cdn.redoc.ly" in original and b"cdn.redoc.ly" not in served
    assert served == original.replace(REDOC_LOGO, NO_IMAGE)


@pytest.mark.unit
def test_the_assets_revalidate_and_an_unknown_one_is_a_json_404(bare: TestClient) -> None:
    first = bare.get("/docs/assets/swagger-ui-bundle.js")
    assert first.headers["cache-control"] == "no-cache" and first.headers["etag"]
    again = bare.get("/docs/assets/swagger-ui-bundle.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    changed = bare.get("/docs/assets/swagger-ui-bundle.js", headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200 and changed.content == first.content
    for name in ("nope.js", "..%2F__init__.py", "redoc.standalone.js.LICENSE.txt"):
        missing = bare.get(f"/docs/assets/{name}")
        assert missing.status_code == 404 and missing.json()["error"], name


@pytest.mark.unit
def test_the_pages_are_public_and_not_in_the_schema(bare: TestClient) -> None:
    access = route_access(cast(FastAPI, bare.app))
    for route in ("GET /docs", "GET /docs/oauth2-redirect", "GET /redoc", "GET /docs/assets/{name}"):
        assert access[route] == "public", route
    paths = bare.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith(("/docs", "/redoc"))]


@pytest.mark.unit
def test_behind_a_path_prefix_the_pages_load_from_under_it(bare: TestClient) -> None:
    proxied = TestClient(bare.app, root_path="/ragqa")
    for path, assets in PAGES.items():
        urls = [a or b for a, b in URL.findall(proxied.get(path).text)]
        assert set(urls) == {f"/ragqa{url}" for url in [*assets, "/openapi.json"]}, path


# --- in a real browser ---------------------------------------------------------------------------


@dataclass
class Visit:
    """What a page asked for: the requests to other hosts (aborted), the requests that failed or got
    an error status, and the errors its console and its scripts reported (a policy violation is one)."""

    outside: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@contextmanager
def offline(browser: Any, url: str, screenshot: Path) -> Iterator[tuple[Any, Visit]]:
    """A fresh page opened at `url`, on which every request for a host other than 127.0.0.1 is
    aborted and recorded. On exit the network is left to go idle (a late request is recorded too),
    and a screenshot of the page is saved at `screenshot`."""
    visit = Visit()
    context = browser.new_context(viewport={"width": 1280, "height": 900})

    def only_local(route: Any) -> None:
        request_url = route.request.url
        if urlsplit(request_url).hostname == "127.0.0.1":
            route.continue_()
        else:
            visit.outside.append(request_url)
            route.abort("internetdisconnected")

    def on_response(response: Any) -> None:
        if response.status >= 400:
            visit.failed.append(f"{response.url}: {response.status}")

    def on_console(message: Any) -> None:
        if message.type == "error":
            visit.console.append(message.text)

    context.route("**/*", only_local)
    page = context.new_page()
    page.on("request", lambda request: visit.requested.append(request.url))
    page.on("requestfailed", lambda request: visit.failed.append(f"{request.url}: {request.failure}"))
    page.on("response", on_response)
    page.on("console", on_console)
    page.on("pageerror", lambda error: visit.console.append(str(error)))
    try:
        page.goto(url)
        yield page, visit
        page.wait_for_load_state("networkidle")
    finally:
        with suppress(Exception):
            page.screenshot(path=str(screenshot))
        context.close()


def operations(server: Server) -> set[tuple[str, str]]:
    """(method, path) of every operation in the server's OpenAPI schema."""
    paths = server.client.get("/openapi.json").json()["paths"]
    return {(method, path) for path, item in paths.items() for method in item if method in METHODS}


def assert_offline(visit: Visit, server: Server, loaded: list[str]) -> None:
    """Nothing was asked of another host, every request was answered, the page reported no error
    (a policy violation is one), and it did ask the app for the paths `loaded` and its schema.

    Not only the routing's record: a request the page's policy refuses never reaches the routing,
    but the browser still reports it (ReDoc's own bundle asks for its logo on cdn.redoc.ly: refused
    by the policy, it would show here as a failed request to that host and a console error)."""
    host = urlsplit(server.base_url).netloc
    elsewhere = [url for url in visit.requested if urlsplit(url).netloc != host]
    assert visit.outside == elsewhere == [], f"asked for other hosts: {visit.outside + elsewhere}"
    assert visit.failed == [], visit.failed
    assert visit.console == [], visit.console
    paths = {urlsplit(url).path for url in visit.requested}
    assert {*loaded, "/openapi.json"} <= paths, paths


@pytest.mark.slow
@needs_chromium
def test_swagger_ui_renders_every_operation_and_calls_the_api_offline(
    browser: Any, server: Server, tmp_path: Path
) -> None:
    expected = operations(server)
    assert {("post", "/v1/ask"), ("post", "/v1/search")} <= expected
    with offline(browser, server.base_url + "/docs", tmp_path / "swagger-ui.png") as (page, visit):
        blocks = {}
        for path in ("/v1/ask", "/v1/search"):
            blocks[path] = page.locator(f".opblock-post:has(.opblock-summary-path[data-path='{path}'])")
            expect(blocks[path]).to_be_visible(timeout=30_000)
        expect(page.locator(".information-container .title")).to_contain_text("ragqa")
        shown = page.locator(".opblock").evaluate_all(
            """blocks => blocks.map(block => [
                block.className.match(/\\bopblock-(get|put|post|delete|options|head|patch|trace)\\b/)[1],
                block.querySelector('.opblock-summary-path').dataset.path])"""
        )
        assert len(shown) == len(expected) and {(method, path) for method, path in shown} == expected

        # "Try it out": the page calls the API (its policy allows this app).
        search = blocks["/v1/search"]
        search.locator(".opblock-summary-control").click()
        search.get_by_role("button", name="Try it out").click()
        search.locator("textarea.body-param__text").fill('{"query": "Nagorno-Karabakh", "top_k": 1}')
        search.get_by_role("button", name="Execute").click()
        live = search.locator(".live-responses-table")
        expect(live.locator(".response-col_status").last).to_have_text("200", timeout=30_000)
        expect(live).to_contain_text("Nagorno-Karabakh")
    assert_offline(
        visit, server, ["/docs/assets/swagger-ui.css", "/docs/assets/swagger-ui-bundle.js", "/v1/search"]
    )


@pytest.mark.slow
@needs_chromium
def test_redoc_renders_every_operation_and_searches_offline(
    browser: Any, server: Server, tmp_path: Path
) -> None:
    expected = operations(server)
    with offline(browser, server.base_url + "/redoc", tmp_path / "redoc.png") as (page, visit):
        # Each operation's endpoint (method and path) heads its samples, in the right-hand panel.
        for path in ("/v1/ask", "/v1/search"):
            endpoint = page.locator("span.http-verb.post + span").filter(
                has_text=re.compile(f"^{re.escape(path)}$")
            )
            expect(endpoint).to_be_visible(timeout=30_000)
        shown = page.locator("span.http-verb").evaluate_all(
            "verbs => verbs.map(verb => [verb.textContent, verb.nextElementSibling.textContent])"
        )
        assert len(shown) == len(expected) and {(method, path) for method, path in shown} == expected
        expect(page.get_by_role("menuitem", name="Ask", exact=True)).to_be_visible()

        # Its search runs in a worker made from its own code (a blob: URL, which its policy allows).
        page.get_by_placeholder("Search...").fill("search")
        results = page.locator("[data-role='search:results'] [role=menuitem]")
        expect(results.filter(has_text=re.compile(r"^post\s*search$", re.IGNORECASE))).to_be_visible(
            timeout=10_000
        )
    assert_offline(visit, server, ["/docs/assets/redoc.standalone.js"])
