"""bench/serve.py's caption level: the server at each `--concurrency` (mixed adapters) and
one-at-a-time transformers `generate` on the same weights, interleaved.

    .venv/bin/python bench/serve.py --levels caption                 # shipped model
    .venv/bin/python bench/serve.py --levels caption --sizes small base

The baseline runs the frozen weights (transformers has no per-request adapters) in
segments before, between and after the server levels, so both see the same drift in the
load of shared cores. Baseline latency includes image preprocessing, as the server's does;
the server's also includes HTTP, JSON and base64. The server runs with its image-feature cache
off (bench/serve.py): the load cycles 64 images, and cache hits would skip vision passes that
the ceiling and the baseline pay (BLIP-base's ViT at 384 px is ~2/3 of a caption's time, so
with the cache on the server rows read above the ceiling). The cache level measures the cache.

With --caption-schedulers batch continuous, one server per caption scheduler runs at each
concurrency, in turns, and the table gets a ratio row (continuous / batch) per concurrency.
"""

from __future__ import annotations

import asyncio
import io
import signal
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import BlipForConditionalGeneration

from adapters import tasks
from adapters.backbone import Backbone
from bench.closed_loop import closed_loop, pct, report_errors
from client import Client


class Baseline:
    """transformers' BlipForConditionalGeneration on the same weights, one image per generate call."""

    def __init__(self, bb_dir: Path, images: list[bytes], max_new_tokens: int):
        self.bb = Backbone.from_dirs(bb_dir)  # the processor the server uses
        self.model = BlipForConditionalGeneration.from_pretrained(str(bb_dir)).eval()
        # generate() swaps [CLS] for BOS and drops the trailing [SEP] itself: hand it the raw prompt
        self.enc = self.bb.processor.tokenizer([tasks.CAPTION_PROMPT], return_tensors="pt")
        self.images, self.max_new_tokens = images, max_new_tokens
        self.lat: list[float] = []
        self.wall = 0.0
        self.segments: list[float] = []  # req/s of each segment: the machine's load drifts

    def caption(self, i: int) -> str:
        pv = self.bb.processor.image_processor([Image.open(io.BytesIO(self.images[i % len(self.images)])).convert("RGB")],
                                               return_tensors="pt").pixel_values
        ids = self.model.generate(pixel_values=pv, input_ids=self.enc.input_ids.clone(),
                                  attention_mask=self.enc.attention_mask, max_new_tokens=self.max_new_tokens,
                                  do_sample=False, num_beams=1)
        return self.bb.processor.tokenizer.decode(ids[0, self.enc.input_ids.shape[1] - 1:], skip_special_tokens=True)

    def segment(self, n: int, budget: float) -> None:
        start, done = time.perf_counter(), 0
        with torch.inference_mode():
            for _ in range(n):
                t0 = time.perf_counter()
                self.caption(len(self.lat))
                self.lat.append(time.perf_counter() - t0)
                done += 1
                if time.perf_counter() - start > budget:
                    break
        wall = time.perf_counter() - start
        self.wall += wall
        self.segments.append(done / wall)

    def reset(self) -> None:
        self.lat, self.wall, self.segments = [], 0.0, []

    def summary(self) -> dict:
        return {"n": len(self.lat), "failed": 0, "rps": len(self.lat) / self.wall, "p50": pct(self.lat, 50),
                "p99": pct(self.lat, 99)}


async def load(url: str, images: list[bytes], names: list[str], concurrency: int, n: int, budget: float,
               max_new_tokens: int) -> dict:
    """Closed loop of caption requests, image i % len and adapter i % len each."""
    async def caption(c, i):
        await c.caption(images[i % len(images)], adapter=names[i % len(names)], max_new_tokens=max_new_tokens)

    return await closed_loop(url, concurrency, n, budget, caption)


def server_levels(start_server, bb_dir: Path, names: list[str], images: list[bytes], args,
                  generate: bool) -> dict:
    """{"server": {concurrency: result}, "schedulers": {name: {concurrency: result}}, "generate":
    result (when `generate`)}: a server per `args.caption_schedulers` (one: the server's default
    when that is ["batch"]) at each `args.concurrency`, requests cycling `names`, the schedulers
    taking turns at each concurrency (first one first, then reversed, ...) so drift in the load
    of shared cores falls on both; "server" is the first scheduler's. With `generate`,
    transformers' one-at-a-time baseline in segments before, between and after them."""
    schedulers = list(getattr(args, "caption_schedulers", None) or ["batch"])
    base = None
    if generate:
        base = Baseline(bb_dir, images, args.max_new_tokens)
        base.segment(2, 30)  # warm-up, then reset
        base.reset()
    seg = max(8, args.baseline_requests // (len(args.concurrency) + 1))
    servers: dict[str, tuple] = {}
    out: dict = {"server": {}, "schedulers": {name: {} for name in schedulers}}
    try:
        for name in schedulers:
            servers[name] = start_server(scheduler=None if schedulers == ["batch"] else name)
        url = servers[schedulers[0]][1]
        if base is not None:
            with Client(url) as c:  # same weights: the server's frozen caption is transformers' caption
                same = c.caption(images[0], adapter="none", max_new_tokens=args.max_new_tokens)["caption"]
            with torch.inference_mode():
                print(f"  server 'none' caption == transformers caption (image 0): {same == base.caption(0).strip()}")
        for name in schedulers:
            asyncio.run(load(servers[name][1], images, names, 4, 8, 30, args.max_new_tokens))  # warm-up
        for k, conc in enumerate(args.concurrency):
            if base is not None:
                base.segment(seg, args.time_budget / 2)
            n = max(32, args.requests * conc // 32)
            for name in schedulers if k % 2 == 0 else schedulers[::-1]:
                r = asyncio.run(load(servers[name][1], images, names, conc, n, args.time_budget, args.max_new_tokens))
                out["schedulers"][name][conc] = r
                tag = f"server c={conc:<3}" + (f" {name:<10}" if len(schedulers) > 1 else "")
                report_errors(tag, r)
                print(f"  {tag} {r['n']:4d} req  {r['rps']:7.1f} req/s  p50 {r['p50'] * 1000:7.0f} ms  "
                      f"p99 {r['p99'] * 1000:7.0f} ms", flush=True)
            out["server"][conc] = out["schedulers"][schedulers[0]][conc]
        if base is not None:
            base.segment(seg, args.time_budget / 2)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    if base is not None:
        print(f"  generate segments (req/s): {', '.join(f'{x:.1f}' for x in base.segments)}", flush=True)
        out["generate"] = base.summary()
    return out
