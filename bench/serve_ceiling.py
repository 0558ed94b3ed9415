"""bench/serve.py's ceiling, fan-out and image-cache levels (issue 13); bench/serve_table.py
puts their rows beside the other levels', one column group per model size.

    .venv/bin/python bench/serve.py --levels ceiling fanout cache                 # shipped model
    .venv/bin/python bench/serve.py --levels ceiling fanout cache --sizes small base

Rows, each with p50/p99 latency:
- ceiling: the model alone, no HTTP: greedy captions in batches of the server's
  `--max-batch-size`, adapters cycled per row as the server's load does. Rows/s here is
  what the server could reach if HTTP, JSON, decoding and batching cost nothing.
- fan-out: one image, 4 caption adapters as ONE request (`adapters=[...]`) vs the same 4
  as 4 concurrent requests; once with adapters leaving the ViT frozen (one shared vision
  pass) and once with adapters on the ViT (own vision rows, one batched call). The server runs
  with its image-feature cache off: with it on, the 4 separate requests share one vision pass
  through the cache as well (the load repeats images), and the row measures the cache.
- cache: 5 questions about one image, asked one after another, with the image-feature
  cache on vs off (`UNITRANS_IMAGE_CACHE_MB=0`).
Latencies are per request (per fan-out unit / per 5-question unit where so named).
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from adapters import AdapterTable, create_adapter, predict, save_adapter, tasks
from adapters.backbone import Backbone
from bench.closed_loop import all_of, closed_loop, pct, report_errors

QUESTIONS = ["what colour is the circle ?", "is there a star ?", "how many squares are there ?",
             "where is the star ?", "what shape is left of the red circle ?"]
FROZEN_VIT = ("decoder", "decoder_cross")  # caption adapters leaving the vision tower frozen


def fanout_adapters(bb_dir: Path, out: Path) -> dict[str, list[str]]:
    """4 caption adapters on the ViT ('vision') and 4 leaving it frozen ('frozen'), random non-zero vectors."""
    bb = Backbone.from_dirs(bb_dir)
    out.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {"vision": [], "frozen": []}
    for group, targets in (("vision", None), ("frozen", FROZEN_VIT)):
        for i in range(4):
            extra = {} if targets is None else {"targets": targets}
            adapter = create_adapter("vcra", bb, task="caption", rank=8, seed=0, **extra)
            gen = torch.Generator().manual_seed(10 * i + len(group))
            with torch.no_grad():
                for p in adapter.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            name = f"fan-{group}-{i}"
            save_adapter(adapter, out / f"{name}.safetensors", recipe={"bench": True})
            names[group].append(name)
    return names


def ceiling(bb_dir: Path, adapters: Path, names: list[str], images: list[bytes], args) -> dict:
    """Offline batched caption throughput at the server's batch size, adapters cycled per row."""
    bb = Backbone.from_dirs(bb_dir)
    table = AdapterTable(bb, capacity=max(4, len(names)))
    for n in names:
        if n != "none":
            table.load(n, adapters / f"{n}.safetensors")
    pils = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    b = args.max_batch_size
    lat, rows, start = [], 0, time.perf_counter()
    with torch.inference_mode():
        for step in range(max(2, args.requests // b)):
            px = tasks.pixels(bb, [pils[(step * b + j) % len(pils)] for j in range(b)])
            routing = table.routing([None if (n := names[(step * b + j) % len(names)]) == "none" else n
                                     for j in range(b)])
            t0 = time.perf_counter()
            predict.captions(bb, px, max_new_tokens=args.max_new_tokens, routing=routing)
            lat.append(time.perf_counter() - t0)
            rows += b
            if time.perf_counter() - start > args.time_budget:
                break
    return {"n": rows, "rps": rows / sum(lat), "p50": pct(lat, 50), "p99": pct(lat, 99)}


def fanout_rows(url: str, names: dict[str, list[str]], images: list[bytes], args, conc: int) -> dict:
    """{(group, "one" | "four"): closed-loop result}; a unit is 4 captions of one image."""
    out = {}
    for group, adapters in names.items():
        async def one_request(c, i, adapters=adapters):
            await c.caption(images[i % len(images)], adapters=adapters, max_new_tokens=args.max_new_tokens)

        async def four_requests(c, i, adapters=adapters):
            await all_of(*(c.caption(images[i % len(images)], adapter=a, max_new_tokens=args.max_new_tokens)
                           for a in adapters))

        for mode, unit in (("one", one_request), ("four", four_requests)):
            asyncio.run(closed_loop(url, 1, 2, args.time_budget, unit, connections=8))  # warm-up: adapters loaded, first calls done
            r = asyncio.run(closed_loop(url, conc, args.requests, args.time_budget, unit, connections=max(conc * 5, 8)))
            report_errors(f"fan-out {group} {mode}", r)
            out[(group, mode)] = r
    return out


def cache_rows(start_server, images: list[bytes], args, conc: int) -> dict:
    """{"on" | "off": closed-loop result}; a unit is 5 questions about one image, one after another."""
    out = {}
    for label, mb in (("on", None), ("off", "0")):
        with env("UNITRANS_IMAGE_CACHE_MB", mb):
            proc, url = start_server()
        try:
            async def five(c, i):  # each server process starts with an empty cache
                for q in QUESTIONS:
                    await c.vqa(images[i % len(images)], q, adapter="none")

            asyncio.run(closed_loop(url, 1, 1, args.time_budget, lambda c, i: c.vqa(images[-1], QUESTIONS[0])))  # warm-up
            r = asyncio.run(closed_loop(url, conc, max(8, args.requests // 5), args.time_budget, five,
                                        connections=max(conc * 5, 8)))
            report_errors(f"cache {label}", r)
            out[label] = r
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return out


@contextmanager
def env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old
