"""The engine: decoded inputs -> batcher -> one batched model call -> per-request results.

It knows tensors, not HTTP. Every model call and adapter-table change runs on ONE
worker thread (`self.executor`); request-side preparation (image resizing,
question tokenization) runs in the caller's thread pool so the worker only stacks
tensors and runs the model.

    engine = Engine(backbone, registry, settings, metrics, executor); await engine.start()
    text = await engine.caption(pixels, "caption-shapes", max_new_tokens=30, num_beams=1)
    answer = await engine.vqa(pixels, engine.question_ids(question), "vqa", num_beams=3)

What a batch computes is `adapters.predict` (decoding defaults, question padding and
masking, answer decoding), the functions `training.evaluate` calls too, split at the
vision encoder: `server.image_features.VisionStage` runs the ViT once per distinct
(image, vision-side adapter state) of the batch, or takes the tokens from its cache,
and `adapters.backbone.from_image_tokens` runs the rest under the per-row routing. A
fan-out request (one image, many adapters) is one item per adapter, submitted together.

Batch keys: only requests with the same key share a call.
    caption       (num_beams, max_new_tokens); with caption_scheduler "continuous", greedy
                  captions (num_beams 1) of any max_new_tokens instead join a running decode
                  token by token (server/continuous.py)
    vqa generate  ("generate", num_beams, max_new_tokens): questions of ANY token length;
                  the batch pads them to its longest and the decoder never attends the
                  padding, so each answer equals the one its question gets alone
    vqa rank      ("rank",): questions and candidate lists of any length
    itc_image, itc_text, itm: one key (texts are padded and masked per call)
    video         pixels (n, F, 3, H, W) run through the same batchers with ("video", F, key):
                  videos of any adapters batch together, by frame count, apart from images;
                  a video row counts F rows toward max_batch_size; its frames go through the
                  same vision stage (one ViT pass per video and vision state), never its cache
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from adapters import predict, tasks
from adapters.backbone import from_image_tokens
from adapters.errors import AdapterTableError
from server.batcher import Batcher
from server.decode_pool import DecodePool, preprocess
from server.images import decode_image
from server.image_features import ImageFeatureCache, VisionStage
from server.metrics import Metrics
from server.registry import FROZEN, AdapterRegistry
from server.settings import Settings

_SPLIT = object()


@dataclass
class Rows:
    """One request's share of a batch: n rows, one adapter."""

    adapter: str | None
    n: int = 1
    # (n, 3, H, W), or (1, 3, H, W) broadcast to n rows (ITM); a video: (n, F, 3, H, W) or (1, F, 3, H, W)
    pixels: torch.Tensor | None = None
    ids: torch.Tensor | None = None  # (L,) question ids, unpadded
    texts: list[str] | None = None  # ITC / ITM texts, one per row
    candidates: list[str] | None = None
    options: predict.Decoding | None = None  # caption / VQA generation, equal across a batch (in the key)
    keys: list[str] | None = None  # content hash per pixel row (image-feature cache); None = hashed on the worker


class Engine:
    def __init__(self, backbone, registry: AdapterRegistry, settings: Settings, metrics: Metrics, executor: Executor):
        self.bb = backbone
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.executor = executor
        self.batchers: dict[str, Batcher] = {}
        # the ViT once per (image, vision-side adapter state), cached: server/image_features.py
        self.vision = VisionStage(backbone, registry, ImageFeatureCache(int(settings.image_cache_mb * 2**20), metrics))
        self.decode_pool: DecodePool | None = None  # processes decoding images (settings.decode_workers > 0)

    async def start(self) -> None:
        s = self.settings
        if s.decode_workers:
            self.decode_pool = DecodePool(s, self.bb.processor.image_processor)
            await self.decode_pool.start()
        runners = {"caption": self._caption_batch, "vqa": self._vqa_batch, "itc_image": self._itc_image_batch,
                   "itc_text": self._itc_text_batch, "itm": self._itm_batch}
        for name, run in runners.items():
            self.batchers[name] = Batcher(name, run, self.executor, max_batch_size=s.max_batch_size,
                                          max_wait_ms=s.max_wait_ms, queue_size=s.queue_size,
                                          timeout_s=s.request_timeout_s, retry_after_s=s.retry_after_s,
                                          metrics=self.metrics)
            self.batchers[name].start()
        if s.caption_scheduler == "continuous":  # greedy image captions join a running decode per token
            from server.continuous import TASK, ContinuousCaptions

            self.batchers[TASK] = ContinuousCaptions(self, self.executor, s, self.metrics)
            self.batchers[TASK].start()

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.close()

    # -- request side (any thread) ----------------------------------------------------------
    def pixels(self, images) -> torch.Tensor:
        """PIL images -> (n, 3, H, W), resized and normalised by the backbone's processor."""
        return tasks.pixels(self.bb, images)

    def keyed_pixels(self, images) -> tuple[torch.Tensor, list[str]]:
        """`pixels` and their content hashes (the image-feature cache's keys), both off the model thread."""
        px, keys = preprocess(self.bb.processor.image_processor, images)
        return px.to(self.bb.device, self.bb.dtype), keys

    async def image_pixels(self, data: bytes, field: str = "image") -> tuple[torch.Tensor, list[str]]:
        """Image file bytes -> (pixels (1, 3, H, W), content keys): decoded and preprocessed in the
        decode processes when there are some, else in the thread pool."""
        if self.decode_pool is not None:
            px, keys = await self.decode_pool.prepare(data, field)
            return px.to(self.bb.device, self.bb.dtype), keys
        s = self.settings
        image = await run_in_threadpool(decode_image, data, max_bytes=s.max_image_bytes,
                                        max_pixels=s.max_image_pixels, field=field)
        return await run_in_threadpool(self.keyed_pixels, [image])

    def question_ids(self, question: str) -> torch.Tensor:
        return predict.question_ids(self.bb, [question], self.settings.max_text_tokens)[0]  # (L,)

    # -- request side (event loop) ----------------------------------------------------------
    async def _submit(self, batcher: str, rows: Rows, key=None):
        cost = rows.n
        if rows.pixels is not None and rows.pixels.dim() == 5:  # video (n, F, 3, H, W): equal F stacks
            key = ("video", rows.pixels.shape[1], key)
            cost = rows.n * rows.pixels.shape[1]  # the ViT runs per frame: a video row weighs F rows
        return await self.batchers[batcher].submit(rows, key=key, rows=cost, adapter=rows.adapter or FROZEN)

    async def caption(self, pixels, adapter, *, max_new_tokens=None, num_beams=None, keys=None) -> str:
        d = predict.decoding("caption", num_beams, max_new_tokens)
        rows = Rows(adapter, pixels=pixels, options=d, keys=keys)
        if self.settings.caption_scheduler == "continuous" and d.num_beams == 1 and pixels.dim() == 4:
            return await self.batchers["caption-continuous"].submit(rows, adapter=adapter or FROZEN)
        return await self._submit("caption", rows, (d.num_beams, d.max_new_tokens))

    async def vqa(self, pixels, ids, adapter, *, max_new_tokens=None, num_beams=None, keys=None) -> str:
        """`ids` (L,) from `question_ids`; None options take predict.VQA's defaults."""
        d = predict.decoding("vqa", num_beams, max_new_tokens)
        key = ("generate", d.num_beams, d.max_new_tokens)  # any question length shares a call
        return await self._submit("vqa", Rows(adapter, pixels=pixels, ids=ids, options=d, keys=keys), key)

    async def vqa_rank(self, pixels, ids, candidates: list[str], adapter, *, keys=None) -> list[float]:
        rows = Rows(adapter, pixels=pixels, ids=ids, candidates=candidates, keys=keys)
        return await self._submit("vqa", rows, ("rank",))

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

    async def itc_images(self, pixels: torch.Tensor, adapter, *, keys=None) -> np.ndarray:
        """(n, 3, H, W) -> unit ITC vectors (n, D)."""
        return await self._chunked("itc_image", pixels.shape[0], lambda a, b: Rows(
            adapter, b - a, pixels=pixels[a:b], keys=None if keys is None else keys[a:b]))

    async def itc_texts(self, texts: list[str], adapter) -> np.ndarray:
        return await self._chunked("itc_text", len(texts), lambda a, b: Rows(adapter, b - a, texts=texts[a:b]))

    async def itm(self, pixels: torch.Tensor, texts: list[str], adapter, *, keys=None) -> np.ndarray:
        """ITM logits (n, 2) of row-aligned pairs; `pixels` (n, ...) or (1, ...) for one image against n texts."""
        one = pixels.shape[0] == 1

        def make(a, b):
            if one:
                return Rows(adapter, b - a, pixels=pixels, texts=texts[a:b], keys=keys)
            return Rows(adapter, b - a, pixels=pixels[a:b], texts=texts[a:b], keys=None if keys is None else keys[a:b])

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

    def _image_tokens(self, group: list[Rows]) -> list[torch.Tensor]:
        """Per item: image tokens (p, T, Hv) of its pixel rows, the ViT run once per distinct
        (image, vision-side adapter state) of the batch (server/image_features.py)."""
        return self.vision.embeds([r.pixels for r in group], [r.keys for r in group], [r.adapter for r in group])

    def _caption_batch(self, items: list[Rows]) -> list:
        d = items[0].options

        def compute(group, routing):
            embeds = torch.cat(self._image_tokens(group))
            return from_image_tokens.captions(self.bb, embeds, num_beams=d.num_beams, max_new_tokens=d.max_new_tokens,
                                              routing=routing)

        return self._run(items, compute)

    def _vqa_batch(self, items: list[Rows]) -> list:
        def compute(group, routing):
            embeds = torch.cat(self._image_tokens(group))
            ids = [r.ids for r in group]  # (L_i,) each; padded and masked per call
            if group[0].candidates is None:
                d = group[0].options
                return from_image_tokens.answers(self.bb, embeds, ids, num_beams=d.num_beams,
                                                 max_new_tokens=d.max_new_tokens, routing=routing)
            scores = from_image_tokens.rank_answers(self.bb, embeds, ids, [r.candidates for r in group],
                                                    routing=routing)
            return [s.float().cpu().tolist() for s in scores]

        return self._run(items, compute)

    def _itc_image_batch(self, items: list[Rows]) -> list:
        def compute(group, routing):
            vecs = from_image_tokens.itc_image(self.bb, torch.cat(self._image_tokens(group)), routing=routing)
            return _split(vecs, group)

        return self._run(items, compute)

    def _itc_text_batch(self, items: list[Rows]) -> list:
        def compute(group, routing):
            ids, mask = tasks.tokens(self.bb, [t for r in group for t in r.texts], self.settings.max_text_tokens)
            return _split(tasks.itc_text(self.bb, ids, mask, routing=routing), group)

        return self._run(items, compute)

    def _itm_batch(self, items: list[Rows]) -> list:
        def compute(group, routing):
            # (1 or n, T, Hv) -> (n, T, Hv): one image against n texts (a video's tokens: T = F * frame tokens)
            tokens = [t.expand(r.n, -1, -1) for t, r in zip(self._image_tokens(group), group)]
            ids, mask = tasks.tokens(self.bb, [t for r in group for t in r.texts], self.settings.max_text_tokens)
            return _split(from_image_tokens.itm_logits(self.bb, torch.cat(tokens), ids, mask, routing=routing), group)

        return self._run(items, compute)


def _split(values: torch.Tensor, group: list[Rows]) -> list[np.ndarray]:
    arr = values.float().cpu().numpy()
    bounds = np.cumsum([0] + [r.n for r in group])
    return [arr[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
