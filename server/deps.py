"""What routes depend on: the running services (built by the app's lifespan) and the API key check."""

from __future__ import annotations

import asyncio
import hmac
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from server.engine import Engine
from server.errors import NotReady, TaskUnavailable, Unauthorized
from server.galleries import GalleryStore
from server.metrics import Metrics
from server.registry import AdapterRegistry
from server.settings import Settings


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    executor: Executor
    backbone: object
    registry: AdapterRegistry
    engine: Engine
    galleries: GalleryStore
    gallery_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock(self, gallery: str) -> asyncio.Lock:
        return self.gallery_locks.setdefault(gallery, asyncio.Lock())

    def require_task(self, task: str) -> None:
        if task not in self.backbone.tasks:
            raise TaskUnavailable(f"this backbone cannot serve {task!r}; it serves {sorted(self.backbone.tasks)}")

    async def on_worker(self, fn, *args):
        """Run `fn` on the model worker thread (adapter-table changes)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


def get_services(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise NotReady("the model is not loaded (starting or shutting down)", headers={"Retry-After": "5"})
    return services


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def require_api_key(request: Request) -> None:
    key = request.app.state.settings.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
