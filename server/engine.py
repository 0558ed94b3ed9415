"""The engine: decoded inputs -> batcher -> one batched model call -> per-request results.

It knows tensors, not HTTP. Every model call and adapter-table change runs on ONE
worker thread (`self.executor`); request-side preparation (image resizing,
question tokenization) runs in the caller's thread pool so the worker only stacks
tensors and runs the model.

    engine = Engine(backbone, registry, settings, metrics, executor); await engine.start()
    text = await engine.caption(pixels, "caption-shapes", max_new_tokens=30, num_beams=1)

Batch keys. Only requests whose tensors line up share a call: captions with the same
beam count and length limits; questions of the same token length (the decoder
attends every question position, padding included, exactly as transformers'
BlipForQuestionAnswering does, so padding a question would change its answer).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch

from adapters import tasks
from adapters.errors import AdapterTableError
from server.batcher import Batcher
from server.metrics import Metrics
from server.registry import FROZEN, AdapterRegistry
from server.settings import Settings

DEFAULT_MAX_NEW_TOKENS = 30
_SPLIT = object()


@dataclass
class Rows:
    """One request's share of a batch: n rows, one adapter."""

    adapter: str | None
    n: int = 1
    pixels: torch.Tensor | None = None  # (n, 3, H, W) or (1, 3, H, W) broadcast to n rows (ITM)
    ids: torch.Tensor | None = None  # (1, L) question ids
    texts: list[str] | None = None  # ITC / ITM texts, one per row
    candidates: list[str] | None = None
    options: tuple = ()  # caption: (num_beams, max_new_tokens), equal across a batch (the batch key)


class Engine:
    def __init__(self, backbone, registry: AdapterRegistry, settings: Settings, metrics: Metrics, executor: Executor):
        self.bb = backbone
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self.batchers: dict[str, Batcher] = {}

    async def start(self) -> None:
        s = self.settings
        runners = {"caption": self._caption_batch, "vqa": self._vqa_batch, "itc_image": self._itc_image_batch,
                   "itc_text": self._itc_text_batch, "itm": self._itm_batch}
        for name, run in runners.items():
            self.batchers[name] = Batcher(name, run, self.executor, max_batch_size=s.max_batch_size,
                                          max_wait_ms=s.max_wait_ms, queue_size=s.queue_size,
                                          timeout_s=s.request_timeout_s, retry_after_s=s.retry_after_s,
                                          metrics=self.metrics)
            self.batchers[name].start()

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()

    # -- request side (any thread) ----------------------------------------------------------
    def pixels(self, images) -> torch.Tensor:
        """PIL images -> (n, 3, H, W), resized and normalised by the backbone's processor."""
        return tasks.pixels(self.bb, images)

    def question_ids(self, question: str) -> torch.Tensor:
        ids, _ = tasks.tokens(self.bb, [question], max_length=self.settings.max_text_tokens)
        return ids  # (1, L)

    # -- request side (event loop) ----------------------------------------------------------
    async def _submit(self, batcher: str, rows: Rows, key=None):
        return await self.batchers[batcher].submit(rows, key=key, rows=rows.n, adapter=rows.adapter or FROZEN)

    async def caption(self, pixels, adapter, *, max_new_tokens=None, num_beams=None) -> str:
        key = (num_beams or 1, max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
        return await self._submit("caption", Rows(adapter, pixels=pixels, options=key), key)

    async def vqa(self, pixels, ids, adapter) -> str:
        return await self._submit("vqa", Rows(adapter, pixels=pixels, ids=ids), ("generate", ids.shape[1]))

    async def vqa_rank(self, pixels, ids, candidates: list[str], adapter) -> list[float]:
        rows = Rows(adapter, pixels=pixels, ids=ids, candidates=candidates)
        return await self._submit("vqa", rows, ("rank", ids.shape[1]))

    async def _chunked(self, batcher: str, n: int, make, window: int = 2) -> np.ndarray:
        """Rows in chunks of max_batch_size, at most `window` in the queue at once (a big
        gallery must not fill the queue other requests need)."""
        step = self.settings.max_batch_size
        gate = asyncio.Semaphore(window)

        async def one(a: int):
            async with gate:
                return await self._submit(batcher, make(a, min(n, a + step)))

        parts = await asyncio.gather(*(one(a) for a in range(0, n, step)))
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    async def itc_images(self, pixels: torch.Tensor, adapter) -> np.ndarray:
        """(n, 3, H, W) -> unit ITC vectors (n, D)."""
        return await self._chunked("itc_image", pixels.shape[0], lambda a, b: Rows(adapter, b - a, pixels=pixels[a:b]))

    async def itc_texts(self, texts: list[str], adapter) -> np.ndarray:
        return await self._chunked("itc_text", len(texts), lambda a, b: Rows(adapter, b - a, texts=texts[a:b]))

    async def itm(self, pixels: torch.Tensor, texts: list[str], adapter) -> np.ndarray:
        """P(match) of row-aligned pairs; `pixels` (n, ...) or (1, ...) for one image against n texts."""
        one = pixels.shape[0] == 1

        def make(a, b):
            return Rows(adapter, b - a, pixels=pixels if one else pixels[a:b], texts=texts[a:b])

        return await self._chunked("itm", len(texts), make)

    # -- model worker ---------------------------------------------------------------------------
    def _run(self, items: list[Rows], compute) -> list:
        """Load adapters, drop items whose adapter failed, run `compute(items, routing)`;
        returns one result or exception per item."""
        failed = self.registry.prepare([r.adapter for r in items])
        out: dict[int, object] = {id(r): failed[r.adapter] for r in items if r.adapter in failed}
        live = [r for r in items if r.adapter not in failed]
        if live:
            try:
                routing = self.registry.routing([r.adapter for r in live for _ in range(r.n)])
            except AdapterTableError:
                routing = _SPLIT  # more distinct adapters than free slots: an earlier load evicted one
            if routing is not _SPLIT:
                self._compute(live, routing, compute, out)
            else:  # one call per adapter; each routing is built right before its call (loads change the table)
                self.metrics.splits.inc()
                for name in dict.fromkeys(r.adapter for r in live):
                    group = [r for r in live if r.adapter == name]
                    error = self.registry.prepare([name]).get(name)
                    if error is not None:
                        out.update((id(r), error) for r in group)
                        continue
                    self._compute(group, self.registry.routing([name] * sum(r.n for r in group)), compute, out)
        return [out[id(r)] for r in items]

    @staticmethod
    def _compute(group: list[Rows], routing, compute, out: dict) -> None:
        with torch.inference_mode():
            results = compute(group, routing)
        out.update((id(r), res) for r, res in zip(group, results, strict=True))

    def _stack(self, tensors) -> torch.Tensor:
        return torch.cat(tensors).to(self.bb.device, self.bb.dtype)

    def _caption_batch(self, items: list[Rows]) -> list:
        num_beams, max_new_tokens = items[0].options

        def compute(group, routing):
            return tasks.caption(self.bb, self._stack([r.pixels for r in group]), num_beams=num_beams,
                                 max_new_tokens=max_new_tokens, routing=routing)

        return self._run(items, compute)

    def _vqa_batch(self, items: list[Rows]) -> list:
        def compute(group, routing):
            pv = self._stack([r.pixels for r in group])
            ids = torch.cat([r.ids for r in group]).to(self.bb.device)
            mask = torch.ones_like(ids)
            if group[0].candidates is None:
                return tasks.vqa(self.bb, pv, ids, mask, routing=routing)
            scores = tasks.vqa_rank(self.bb, pv, ids, mask, [r.candidates for r in group], routing=routing)
            return [s.float().cpu().tolist() for s in scores]

        return self._run(items, compute)

    def _itc_image_batch(self, items: list[Rows]) -> list:
        def compute(group, routing):
            vecs = tasks.itc_image(self.bb, self._stack([r.pixels for r in group]), routing=routing)
            return _split(vecs, group)

        return self._run(items, compute)

    def _itc_text_batch(self, items: list[Rows]) -> list:
        def compute(group, routing):
            ids, mask = tasks.tokens(self.bb, [t for r in group for t in r.texts], self.settings.max_text_tokens)
            return _split(tasks.itc_text(self.bb, ids, mask, routing=routing), group)

        return self._run(items, compute)

    def _itm_batch(self, items: list[Rows]) -> list:
        def compute(group, routing):
            pv = self._stack([r.pixels.expand(r.n, -1, -1, -1) for r in group])
            ids, mask = tasks.tokens(self.bb, [t for r in group for t in r.texts], self.settings.max_text_tokens)
            return _split(tasks.itm_scores(self.bb, pv, ids, mask, routing=routing), group)

        return self._run(items, compute)


def _split(values: torch.Tensor, group: list[Rows]) -> list[np.ndarray]:
    arr = values.float().cpu().numpy()
    bounds = np.cumsum([0] + [r.n for r in group])
    return [arr[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
