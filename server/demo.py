"""The demo page at `/`: static HTML, CSS and JavaScript in server/static/ (no CDN, no
build step) that call the public API from the browser, plus the example images of
`examples/` (the shapes world scenes the README asks about), preloaded on the page.

    GET /                         the page
    GET /demo/static/<file>       its script and style sheet
    GET /demo/examples            {"examples": [{"name", "url"}]}
    GET /demo/examples/<name>     one example image

None of these is in the OpenAPI schema, and none needs the API key: they hold no
data of the server's. The page's own API calls send the key the user types in.
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


def install(app: FastAPI) -> None:
    """The page's routes; the routes come before the mounts, so /demo/examples is the list."""
    app.include_router(router)
    app.mount("/demo/static", StaticFiles(directory=STATIC), name="demo-static")
    if EXAMPLES.is_dir():
        app.mount("/demo/examples", StaticFiles(directory=EXAMPLES), name="demo-examples")
