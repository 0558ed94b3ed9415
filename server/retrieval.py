"""Retrieval: ITC top-k over a gallery or inline items, then ITM re-rank of those k
by BLIP's score (`adapters.predict.rerank_score`, the one `training.evaluate` ranks by).

    text -> image   query text vs an image gallery, or inline images
    text -> video   query text vs a video gallery, or inline videos
    image -> text   query image (or video) vs a text gallery, or inline texts

A request naming no adapter runs with the retrieval default, or with the video retrieval
default when it carries or searches videos (`searches_videos`).

Gallery vectors are kept per adapter (server/galleries.py: the vector lifecycle); a
search with an adapter whose vectors are missing or stale (another adapter file,
another backbone, an item replaced since) computes and stores them first. `filter`
(server/gallery_filter.py) restricts a gallery search before its top-k.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import torch
from PIL import Image
from starlette.concurrency import run_in_threadpool

from adapters import predict
from adapters.backbone.frames import sample
from server import videos
from server.deps import Services
from server.errors import NotFound, Unprocessable
from server.gallery_filter import FilterError, compile_filter
from server.galleries import space_columns
from server.images import b64decode
from server.inputs import check_text
from server.registry import FROZEN, check_name
from server.schemas import Hit, RetrieveRequest, RetrieveResponse


CHUNK = 256  # gallery items decoded and embedded at a time
SAVE_EVERY = 4096  # vectors written at least this often while filling a gallery (progress survives a restart)


class Decoded:
    """Pixels decoded once per request, shared by a fan-out's per-adapter searches:
    name -> task making (pixels, content keys), awaited by every adapter."""

    def __init__(self):
        self._tasks: dict[str, asyncio.Task] = {}

    async def get(self, name: str, make):
        if name not in self._tasks:
            self._tasks[name] = asyncio.ensure_future(make())
        return await self._tasks[name]


def _png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def stored_pixels(svc: Services, kind: str, blobs: list[bytes]):
    """Stored gallery items -> (pixels, content keys): images (n, 3, H, W); videos (n, F, 3, H, W)."""
    if kind == "video":  # stored at video_num_frames; items stored under another setting are resampled to it
        n = svc.settings.video_num_frames
        return videos.keyed_video_pixels(svc.engine, [sample(videos.unpack_frames(b), n) for b in blobs])
    return svc.engine.keyed_pixels([_png(b) for b in blobs])


def space(svc: Services, adapter: str | None) -> tuple[str, str]:
    """The gallery columns of `adapter`'s vectors on this backbone."""
    return space_columns(adapter or FROZEN, svc.registry.version(adapter), svc.backbone.fingerprint)


async def gallery_vectors(svc: Services, tbl, kind: str, adapter: str | None) -> None:
    """Compute and store the vectors `tbl` lacks for `adapter` (caller holds the gallery lock)."""
    cols, store = space(svc, adapter), svc.galleries
    batches = await run_in_threadpool(store.missing, tbl, cols, CHUNK)
    ids, keys, parts = [], [], []
    while (chunk := await run_in_threadpool(next, batches, None)) is not None:  # CHUNK rows in memory at a time
        if kind in ("image", "video"):
            pixels, content = await run_in_threadpool(stored_pixels, svc, kind, [it["image"] for it in chunk])
            parts.append(await svc.engine.itc_images(pixels, adapter, keys=content))  # image tokens cached for ITM
        else:
            parts.append(await svc.engine.itc_texts([it["text"] for it in chunk], adapter))
        ids += [it["id"] for it in chunk]
        keys += [it["key"] for it in chunk]
        if len(keys) >= SAVE_EVERY:
            await run_in_threadpool(store.put_vectors, tbl, cols, ids, keys, np.concatenate(parts))
            ids, keys, parts = [], [], []
    if keys:
        await run_in_threadpool(store.put_vectors, tbl, cols, ids, keys, np.concatenate(parts))


async def open_gallery(svc: Services, name: str, kind: str | None = None):
    """The gallery's table (404 if absent; 422 if it holds the other modality than `kind`)."""
    check_name(name, "gallery")
    tbl = await run_in_threadpool(svc.galleries.table, name)
    if tbl is None:
        raise NotFound(f"no gallery named {name!r}")
    have = svc.galleries.kind(tbl)
    if kind is not None and have != kind:
        raise Unprocessable(f"gallery {name!r} holds {have}s; this query needs a {kind} gallery")
    return tbl


async def search_gallery(svc: Services, name: str, kind: str, adapter, query: np.ndarray, top_k: int,
                         where: str | None):
    """ITC top-k of a gallery ([(row with id, metadata, content), itc]), vectors for `adapter` filled in first."""
    tbl = await open_gallery(svc, name, kind)
    async with svc.lock(name):
        await gallery_vectors(svc, tbl, kind, adapter)
    return await run_in_threadpool(svc.galleries.search, tbl, space(svc, adapter), query, top_k, where)


async def gallery_kind(svc: Services, name: str, allowed: tuple[str, ...]) -> str:
    """The gallery's kind (404 if absent; 422 if not one of `allowed`)."""
    kind = svc.galleries.kind(await open_gallery(svc, name))
    if kind not in allowed:
        raise Unprocessable(f"gallery {name!r} holds {kind}s; this query needs a {' or '.join(allowed)} gallery")
    return kind


async def inline_pixels(svc: Services, req: RetrieveRequest):
    """(pixels, content keys) of a text query's inline candidates: images (n, 3, H, W), decoded in
    the decode processes when there are some, or videos (n, F, 3, H, W)."""
    if req.videos is not None:
        clips = [await videos.load_video(it.video, req.num_frames, svc.settings, f"videos[{i}].video")
                 for i, it in enumerate(req.videos)]
        return await run_in_threadpool(videos.keyed_video_pixels, svc.engine, clips)
    raw = [b64decode(it.image, f"images[{i}].image") for i, it in enumerate(req.images)]
    parts = await asyncio.gather(*(svc.engine.image_pixels(b, f"images[{i}].image") for i, b in enumerate(raw)),
                                 return_exceptions=True)
    for part in parts:  # the first bad image by position, not by time
        if isinstance(part, BaseException):
            raise part
    return torch.cat([px for px, _ in parts]), [k for _, keys in parts for k in keys]


async def query_pixels(svc: Services, req: RetrieveRequest):
    """(pixels, content keys) of an image query (1, 3, H, W) or a video query (1, F, 3, H, W)."""
    if req.video is not None:
        return await videos.pixels_of(svc, req.video, req.num_frames)
    return await svc.engine.image_pixels(b64decode(req.image, "image"), "image")


async def searches_videos(svc: Services, req: RetrieveRequest) -> bool:
    """A video query, inline videos or a video gallery: a request naming no adapter then runs
    with the video retrieval default (server/registry.py)."""
    if req.video is not None or req.videos is not None:
        return True
    if req.text is not None and req.gallery is not None:
        return await gallery_kind(svc, req.gallery, ("image", "video")) == "video"
    return False


def _top(sims: np.ndarray, k: int) -> list[int]:
    k = min(k, sims.shape[0])
    top = np.argpartition(-sims, k - 1)[:k]
    return [int(i) for i in top[np.argsort(-sims[top], kind="stable")]]


async def retrieve(svc: Services, req: RetrieveRequest, *, adapter: str | None = None,
                   decoded: Decoded | None = None) -> RetrieveResponse:
    """One search with `adapter` (default: the request's); `decoded` shares decoded images
    between the searches of one fan-out request."""
    s = svc.settings
    decoded = decoded or Decoded()
    if req.top_k > s.max_top_k:
        raise Unprocessable(f"top_k: {req.top_k} is over the limit of {s.max_top_k}")
    inline = req.images or req.videos or req.texts or []
    if len(inline) > s.max_inline_items:
        raise Unprocessable(f"{len(inline)} inline items is over the limit of {s.max_inline_items}")
    if len({it.id for it in inline}) != len(inline):
        raise Unprocessable("inline item ids must be unique")
    where = None
    if req.filter is not None:
        if req.gallery is None:
            raise Unprocessable("filter: applies to a gallery search, not to inline items")
        try:
            where = compile_filter(req.filter)
        except FilterError as exc:
            raise Unprocessable(f"filter: {exc}") from None
    name = req.adapter if adapter is None else adapter
    adapter = svc.registry.resolve("retrieve", name, video=name is None and await searches_videos(svc, req))
    engine = svc.engine

    if req.text is not None:  # text -> image or video
        check_text(req.text, s, "text")
        query = (await engine.itc_texts([req.text], adapter))[0]
        if req.gallery is not None:
            kind = await gallery_kind(svc, req.gallery, ("image", "video"))
            found = await search_gallery(svc, req.gallery, kind, adapter, query, req.top_k, where)
            cands = [(it["id"], itc, it.get("metadata")) for (it, itc) in found]
            blobs = [it["image"] for it, _ in found]
            pixels, keys = await run_in_threadpool(stored_pixels, svc, kind, blobs) if blobs else (None, None)
        else:
            kind = "video" if req.videos is not None else "image"
            items = req.images or req.videos
            all_px, all_keys = await decoded.get("items", lambda: inline_pixels(svc, req))
            sims = (await engine.itc_images(all_px, adapter, keys=all_keys)) @ query
            top = _top(sims, req.top_k)
            cands = [(items[i].id, float(sims[i]), None) for i in top]
            pixels, keys = all_px[top], [all_keys[i] for i in top]
        if req.rerank and cands:  # image tokens from the cache where the ITC pass left them
            scores = await engine.itm(pixels, [req.text] * len(cands), adapter, keys=keys)
        direction = f"text_to_{kind}"
    else:  # image or video -> text
        pixels, keys = await decoded.get("query", lambda: query_pixels(svc, req))
        query = (await engine.itc_images(pixels, adapter, keys=keys))[0]
        if req.gallery is not None:
            found = await search_gallery(svc, req.gallery, "text", adapter, query, req.top_k, where)
            cands = [(it["id"], itc, it.get("metadata")) for (it, itc) in found]
            texts = [it["text"] for it, _ in found]
        else:
            for i, it in enumerate(req.texts):
                check_text(it.text, s, f"texts[{i}].text")
            sims = (await engine.itc_texts([it.text for it in req.texts], adapter)) @ query
            top = _top(sims, req.top_k)
            cands = [(req.texts[i].id, float(sims[i]), None) for i in top]
            texts = [req.texts[i].text for i in top]
        if req.rerank and cands:
            scores = await engine.itm(pixels, texts, adapter, keys=keys)
        direction = "video_to_text" if req.video is not None else "image_to_text"

    if req.rerank and cands:  # `scores`: ITM logits (k, 2) of the ITC top-k
        scores = predict.rerank_score(scores, np.array([itc for _, itc, _ in cands], dtype=np.float32))
        hits = [Hit(id=i, score=float(sc), itc=itc, metadata=m) for (i, itc, m), sc in zip(cands, scores)]
        hits.sort(key=lambda h: -h.score)
    else:
        hits = [Hit(id=i, score=itc, itc=itc, metadata=m) for i, itc, m in cands]
    return RetrieveResponse(results=hits, adapter=adapter or FROZEN, direction=direction)
