"""The pages a browser opens: the demo page at `/`, and the Content-Security-Policy that
keeps it, /docs and /redoc (served by fastapi-offline, see server/app.py) on this server.

The demo page is static HTML, CSS and JavaScript in server/static/ (no CDN, no build
step) calling the public API from the browser, with the example images of `examples/`
(the shapes world scenes the README asks about) preloaded:

    GET /                         the page
    GET /demo/static/<file>       its script and style sheet
    GET /demo/examples            {"examples": [{"name", "url"}]}
    GET /demo/examples/<name>     one example image

None of these is in the OpenAPI schema, and none needs the API key: they hold no
data of the server's. The page's own API calls send the key the user types in.

The three pages are sent with a Content-Security-Policy that allows only this server
(and inline and blob: code, which Swagger UI and ReDoc use): ReDoc's bundle would
otherwise load its sidebar logo from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from server.settings import ROOT

STATIC = Path(__file__).resolve().parent / "static"
EXAMPLES = ROOT / "examples"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/demo/examples")
async def examples() -> dict:
    files = sorted(p.name for p in EXAMPLES.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
        if EXAMPLES.is_dir() else []
    return {"examples": [{"name": name, "url": f"/demo/examples/{name}"} for name in files]}


PAGES = {"/", "/docs", "/redoc"}
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")


class LocalOnlyPages:
    """Adds the Content-Security-Policy header to the pages' HTML (pure ASGI)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in PAGES:
            return await self.app(scope, receive, send)

        async def with_csp(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"content-security-policy", CSP.encode())]}
            await send(message)

        await self.app(scope, receive, with_csp)


def install(app: FastAPI) -> None:
    """The page's routes; the routes come before the mounts, so /demo/examples is the list."""
    app.add_middleware(LocalOnlyPages)
    app.include_router(router)
    app.mount("/demo/static", StaticFiles(directory=STATIC), name="demo-static")
    if EXAMPLES.is_dir():
        app.mount("/demo/examples", StaticFiles(directory=EXAMPLES), name="demo-examples")
