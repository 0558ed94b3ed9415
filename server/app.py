"""The FastAPI app factory. The model loads in the lifespan, never at import time.

    app = create_app(Settings(backbone=["models/blip-shapes"]))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Lifespan: one model worker thread is created; the backbone and the adapter table
are built on it (the table is only ever touched there); each task's default
adapter is loaded and pinned; the batchers start. uvicorn accepts connections only
after that, so a backbone that fails to load stops the process with its error (fail
fast) instead of leaving an unready server up. /readyz then reports what is served;
during shutdown task routes answer 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from fastapi import Depends, FastAPI, Response
from fastapi_offline import FastAPIOffline
from starlette.requests import ClientDisconnect

from adapters.backbone import Backbone, BackboneSettings
from server import admin, errors, pages, routes
from server.deps import Services, ServicesDep, require_api_key
from server.engine import Engine
from server.galleries import GalleryStore
from server.images import configure_pil
from server.metrics import CONTENT_TYPE_LATEST, Metrics
from server.registry import AdapterRegistry
from server.schemas import Ready
from server.settings import Settings

log = logging.getLogger("unitrans.server")


def _load(settings: Settings):
    """On the model worker thread: backbone, then the adapter table and its defaults."""
    dirs = settings.backbone_dirs()
    backbone = Backbone.from_dirs(*dirs, settings=BackboneSettings(dtype=settings.dtype, device=settings.device))
    registry = AdapterRegistry(backbone, settings)
    defaults = registry.load_defaults()
    log.info("backbone %s (fingerprint %s, tasks %s); default adapters loaded: %s",
             ", ".join(map(str, dirs)), backbone.fingerprint, sorted(backbone.tasks), defaults or "none")
    return backbone, registry


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    pil_limit = configure_pil(settings.max_image_pixels)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unitrans-model")
    threads = torch.get_num_threads()
    if settings.torch_threads:  # process-wide in torch; restored at shutdown (tests run servers in-process)
        torch.set_num_threads(settings.torch_threads)
    try:
        backbone, registry = await asyncio.get_running_loop().run_in_executor(executor, _load, settings)
        engine = Engine(backbone, registry, settings, metrics, executor)
        await engine.start()
        galleries = GalleryStore(settings.gallery_uri(), settings.gallery_storage_options,
                                 settings.gallery_index_threshold)
        if any((settings.data / "galleries").glob("*/manifest.json")):
            log.warning("galleries of the old format in %s are not served; import them with "
                        "`python -m server.galleries migrate %s`", settings.data / "galleries", settings.data)
        app.state.services = Services(settings, metrics, executor, backbone, registry, engine, galleries)
        yield
    finally:
        services = getattr(app.state, "services", None)
        app.state.services = None
        if services is not None:
            await services.engine.stop()
        executor.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)
        configure_pil(pil_limit)


class ObserveMiddleware:
    """Counts and times every HTTP request by route template (pure ASGI: no per-request task)."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            label = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(label, str(status[0])).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: from Content-Length up front, else counted as they stream."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(send)
        seen, answered = 0, False

        async def counted():
            nonlocal seen, answered
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                if not answered:
                    answered = True
                    await self._too_large(send)
                raise ClientDisconnect()  # the app stops reading; whatever it answers is dropped below
            return message

        async def guarded(message):
            if not answered:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except ClientDisconnect:
            if not answered:
                raise

    async def _too_large(self, send):
        body = json.dumps(errors.error_body("payload_too_large",
                                            f"request body is over the limit of {self.max_bytes} bytes")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # /docs and /redoc with their scripts served by this process (fastapi-offline ships them),
    # so both pages work with no internet; no request leaves for a CDN
    app = FastAPIOffline(title="unitrans", version="0.1.0", lifespan=lifespan,
                         description="One frozen BLIP backbone, many tiny task adapters chosen per request. "
                                     "A demo page is at `/`.",
                         static_url="/docs-static",
                         # no validator badge: Swagger UI would fetch it from validator.swagger.io
                         swagger_ui_parameters={"validatorUrl": None})
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.services = None
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(admin.router)
    pages.install(app)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(ObserveMiddleware, metrics=app.state.metrics)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """The process is up and its event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Ready, tags=["health"])
    async def readyz(svc: ServicesDep) -> Ready:
        """The model is loaded and the batchers run (503 until then)."""
        return Ready(ready=True, backbone=", ".join(str(d.name) for d in svc.settings.backbone_dirs()),
                     fingerprint=svc.backbone.fingerprint, tasks=sorted(svc.backbone.tasks),
                     adapters_loaded=len(svc.registry.loaded),
                     defaults=svc.registry.defaults(svc.backbone.tasks))

    @app.get("/metrics", tags=["health"], dependencies=[Depends(require_api_key)])
    async def metrics() -> Response:
        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
