"""A real unitrans server on loopback for the server and client tests (no tests here).

    world = tiny_world()                       # tiny random backbone + adapter files, built once
    with running_server(world, queue_size=2) as url: ...

The backbone is tests/tiny.py's random BLIP; adapters are made with `create_adapter`,
their vectors set to random non-zero values, and saved with `save_adapter`, so each
adapter really changes the outputs. uvicorn runs in a background thread on a socket
bound to 127.0.0.1:0.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import io
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import uvicorn
from PIL import Image

from adapters import create_adapter, save_adapter
from client import AsyncClient, Client, ConnectionFailed
from adapters.backbone import Backbone
from server.app import create_app
from server.settings import Settings
from tests.tiny import random_images, tiny_config, tiny_processor

# name -> (kind, task); "caption", "vqa", "retrieval" are the task defaults
ADAPTERS = {
    "caption": ("vcra", "caption"), "caption-b": ("vcra", "caption"), "caption-lora": ("lora", "caption"),
    "caption-vlpet": ("vl-pet-large", "caption"),
    "vqa": ("vcra", "vqa"), "vqa-b": ("vcra", "vqa"), "vqa-vlpet": ("vl-pet-small", "vqa"), "vqa-lora": ("lora", "vqa"),
    "retrieval": ("vcra", "retrieve"), "retrieval-b": ("vcra", "retrieve"),
}


@functools.cache
def tiny_world() -> Path:
    root = Path(tempfile.mkdtemp(prefix="unitrans-world-"))
    atexit.register(shutil.rmtree, root, True)
    processor = tiny_processor()
    torch.manual_seed(0)
    Backbone.from_config(tiny_config(processor.tokenizer), processor).save_pretrained(root / "backbone")
    bb = Backbone.from_dirs(root / "backbone")
    (root / "adapters").mkdir()
    for i, (name, (kind, task)) in enumerate(ADAPTERS.items()):
        write_random_adapter(bb, root / "adapters" / f"{name}.safetensors", kind, task, seed=100 + i)
    return root


def write_random_adapter(bb, path: Path, kind: str, task: str, seed: int, **options) -> None:
    """An adapter file whose every parameter is random and non-zero (so it really changes the
    outputs, unlike a fresh adapter, which equals the frozen model)."""
    adapter = create_adapter(kind, bb, task=task, rank=4, seed=0, **options)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (1.5 if kind == "vcra" else 0.3))
    save_adapter(adapter, path, recipe={"test": True})


def settings_for(world: Path, data: Path | None = None, **overrides) -> Settings:
    data = data or Path(tempfile.mkdtemp(prefix="unitrans-data-"))
    # one torch thread: with the CPU shared, two threads spin against each other (10x slower here)
    # shipped_adapters=False: models/adapters fit only models/blip-shapes (and share names with these)
    base = dict(backbone=[world / "backbone"], adapters=[world / "adapters"], shipped_adapters=False, data=data,
                max_wait_ms=5, log_level="warning", torch_threads=1)
    return Settings(**{**base, **overrides})


@contextmanager
def running_server(world: Path | None = None, **overrides):
    """Start uvicorn in a thread with the tiny world; yields the base URL; stops it after."""
    settings = settings_for(world or tiny_world(), **overrides)
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def images(n: int, seed: int = 0) -> list[bytes]:
    return [png(im) for im in random_images(n, seed=seed)]


def noise(size: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode)


def wait_ready(client, proc, seconds: float = 90) -> None:
    """Poll /readyz of a server started as a subprocess until it is ready; fail if the
    process exits first or `seconds` pass."""
    deadline = time.time() + seconds
    while True:
        try:
            if client.ready()["ready"]:
                return
        except ConnectionFailed:
            pass
        assert time.time() < deadline and proc.poll() is None, "server did not come up"
        time.sleep(0.25)


def alone_then_together(url: str, reqs: list[tuple[str, dict]]) -> tuple[list, list]:
    """Each (client method, kwargs) request sent one at a time, then all at once (the server
    batches them together): (answers alone, answers together), in request order."""
    with Client(url) as c:
        alone = [getattr(c, name)(**kw) for name, kw in reqs]

    async def together():
        async with AsyncClient(url) as ac:
            return await asyncio.gather(*(getattr(ac, name)(**kw) for name, kw in reqs))

    return alone, asyncio.run(together())
