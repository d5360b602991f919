"""The chat page (public): GET / serves it; its script and style are the files of service/static/,
which service/app.py mounts at /static (public too)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from service.access import public

STATIC = resources.files("service").joinpath("static")
PAGE = STATIC.joinpath("index.html").read_text(encoding="utf-8")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(dependencies=[Depends(public)])


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def chat_page() -> HTMLResponse:
    """The chat page. Its policy lets it load only this app's own script and style and talk only
    to this app, so even text that slipped into the page as HTML could not run or call out."""
    return HTMLResponse(PAGE, headers=PAGE_HEADERS)
