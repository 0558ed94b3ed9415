"""Adapter and gallery routes: list/load/unload adapters; create, fill, empty, list, delete galleries."""

from __future__ import annotations

import json
import logging

from fastapi import APIRouter, BackgroundTasks, Depends, Query
from starlette.concurrency import run_in_threadpool

from server import videos
from server.deps import ServicesDep, require_api_key
from server.errors import Conflict, NotFound, Unprocessable
from server.galleries import GalleryExists, item_key
from server.images import encode_png
from server.inputs import check_text, load_b64_image
from server.registry import FROZEN, check_name
from server.retrieval import gallery_vectors, open_gallery, space
from server.schemas import (AdapterInfo, AdapterList, GalleryAdd, GalleryChange, GalleryCreate, GalleryDeleteItems,
                            GalleryIndex, GalleryInfo, GalleryList)
from server.settings import DEFAULT_SLOTS, slot_label

log = logging.getLogger("unitrans.server")
router = APIRouter(dependencies=[Depends(require_api_key)])


# -- adapters ---------------------------------------------------------------------
def _info(svc, name: str) -> AdapterInfo:
    entry = svc.registry.loaded.get(name)
    meta = entry.meta if entry else svc.registry.header(name)
    defaults = [slot_label(t, v) for t, v in DEFAULT_SLOTS if svc.settings.default_adapter(t, v) == name]
    if meta is None or isinstance(meta, Exception):
        return AdapterInfo(name=name, loaded=False, pinned=False, default_for=defaults,
                           error=str(meta) if meta is not None else "file missing")
    return AdapterInfo(name=name, kind=meta.kind, task=meta.task, rank=meta.rank,
                       trainable_params=meta.trainable_params, bytes=meta.nbytes,
                       backbone_fingerprint=meta.backbone_fingerprint, loaded=entry is not None,
                       pinned=bool(entry and entry.pinned), default_for=defaults)


@router.get("/adapters", response_model=AdapterList, tags=["adapters"])
async def list_adapters(svc: ServicesDep) -> AdapterList:
    """Adapters loaded or loadable from the adapter directory (`none` = frozen backbone, always there)."""
    names = sorted(set(svc.registry.loaded) | set(await run_in_threadpool(svc.registry.file_names)))
    infos = [await run_in_threadpool(_info, svc, n) for n in names]
    return AdapterList(adapters=infos, backbone_fingerprint=svc.backbone.fingerprint,
                       capacity=svc.settings.adapter_capacity)


@router.post("/adapters/{name}", response_model=AdapterInfo, tags=["adapters"])
async def load_adapter(name: str, svc: ServicesDep, pin: bool | None = Query(None)) -> AdapterInfo:
    """(Re)load `<adapter dir>/<name>.safetensors`; a failed load leaves serving untouched."""
    check_name(name)
    if name == FROZEN:
        raise Unprocessable(f"{FROZEN!r} is the frozen backbone, not a file")
    await svc.on_worker(svc.registry.load, name, pin)
    return _info(svc, name)


@router.delete("/adapters/{name}", response_model=AdapterInfo, tags=["adapters"])
async def unload_adapter(name: str, svc: ServicesDep) -> AdapterInfo:
    """Unload from memory (the file stays; a later request naming it loads it again)."""
    check_name(name)
    await svc.on_worker(svc.registry.unload, name)
    return _info(svc, name)


# -- galleries --------------------------------------------------------------------
async def _gallery_info(svc, tbl) -> GalleryInfo:
    return GalleryInfo(**await run_in_threadpool(svc.galleries.info, tbl))


@router.get("/galleries", response_model=GalleryList, tags=["galleries"])
async def list_galleries(svc: ServicesDep) -> GalleryList:
    infos = []
    for name in await run_in_threadpool(svc.galleries.names):
        tbl = await run_in_threadpool(svc.galleries.table, name)
        if tbl is not None:  # dropped by another replica meanwhile
            infos.append(await _gallery_info(svc, tbl))
    return GalleryList(galleries=infos)


@router.post("/galleries", response_model=GalleryInfo, status_code=201, tags=["galleries"])
async def create_gallery(body: GalleryCreate, svc: ServicesDep) -> GalleryInfo:
    try:
        tbl = await run_in_threadpool(svc.galleries.create, body.name, body.kind)
    except GalleryExists:
        raise Conflict(f"gallery {body.name!r} already exists") from None
    return await _gallery_info(svc, tbl)


@router.get("/galleries/{name}", response_model=GalleryInfo, tags=["galleries"])
async def get_gallery(name: str, svc: ServicesDep) -> GalleryInfo:
    return await _gallery_info(svc, await open_gallery(svc, name))


@router.get("/galleries/{name}/items", tags=["galleries"])
async def list_items(name: str, svc: ServicesDep) -> dict:
    tbl = await open_gallery(svc, name)
    return {"gallery": name, "items": await run_in_threadpool(svc.galleries.items, tbl)}


@router.delete("/galleries/{name}", tags=["galleries"])
async def delete_gallery(name: str, svc: ServicesDep) -> dict:
    check_name(name, "gallery")
    if not await run_in_threadpool(svc.galleries.delete, name):
        raise NotFound(f"no gallery named {name!r}")
    return {"deleted": name}


@router.post("/galleries/{name}/items", response_model=GalleryChange, tags=["galleries"])
async def add_items(name: str, body: GalleryAdd, svc: ServicesDep, tasks: BackgroundTasks) -> GalleryChange:
    """Add or replace items (by id); their ITC vectors are computed now with `adapter` (default:
    the retrieval default, the video retrieval default for a video gallery), and later for any
    other adapter on its first search."""
    s = svc.settings
    svc.require_task("retrieve")
    tbl = await open_gallery(svc, name)
    kind = svc.galleries.kind(tbl)
    if len(body.items) > s.max_inline_items:
        raise Unprocessable(f"{len(body.items)} items is over the limit of {s.max_inline_items} per request")
    if len({it.id for it in body.items}) != len(body.items):
        raise Unprocessable("item ids must be unique within one request")
    for i, it in enumerate(body.items):
        try:
            json.dumps(it.metadata, ensure_ascii=False, allow_nan=False).encode()
            it.id.encode()
        except (ValueError, UnicodeEncodeError):
            raise Unprocessable(f"items[{i}]: id and metadata must be UTF-8 JSON (no NaN, no lone surrogates)") from None
    adapter = svc.registry.resolve("retrieve", body.adapter, video=kind == "video")
    rows = []
    if kind == "image":
        images = []
        for i, it in enumerate(body.items):
            if it.image is None or it.text is not None or it.video is not None:
                raise Unprocessable(f"items[{i}]: an image gallery takes 'image' (base64), not 'text'")
            images.append(await load_b64_image(it.image, s, f"items[{i}].image"))
        pngs = await run_in_threadpool(lambda: [encode_png(im) for im in images])
        rows = [{"id": it.id, "key": item_key(it.id, png), "image": png, "metadata": it.metadata}
                for it, png in zip(body.items, pngs)]
        pixels, keys = await run_in_threadpool(svc.engine.keyed_pixels, images)
        vecs = await svc.engine.itc_images(pixels, adapter, keys=keys)  # image tokens cached for ITM re-ranks
    elif kind == "video":
        rows, vecs = await video_rows(svc, body, adapter)
    else:
        for i, it in enumerate(body.items):
            if it.text is None or it.image is not None or it.video is not None:
                raise Unprocessable(f"items[{i}]: a text gallery takes 'text', not 'image'")
            check_text(it.text, s, f"items[{i}].text")
            rows.append({"id": it.id, "key": item_key(it.id, it.text), "text": it.text, "metadata": it.metadata})
        vecs = await svc.engine.itc_texts([it.text for it in body.items], adapter)
    tbl = await open_gallery(svc, name, kind)  # may have been deleted meanwhile
    added, replaced = await run_in_threadpool(svc.galleries.add, tbl, rows, space(svc, adapter), vecs)
    tasks.add_task(_maintain, svc, tbl)
    return GalleryChange(gallery=name, added=added, replaced=replaced, size=await run_in_threadpool(tbl.count_rows))


async def video_rows(svc, body: GalleryAdd, adapter) -> tuple[list[dict], object]:
    """A video gallery's new rows (frames sampled at video_num_frames, packed) and their ITC vectors."""
    s = svc.settings
    clips = []
    for i, it in enumerate(body.items):
        if it.video is None or it.image is not None or it.text is not None:
            raise Unprocessable(f"items[{i}]: a video gallery takes 'video' (base64 file or frame list)")
        clips.append(await videos.load_video(it.video, None, s, f"items[{i}].video"))
    blobs = await run_in_threadpool(lambda: [videos.pack_frames(c) for c in clips])
    rows = [{"id": it.id, "key": item_key(it.id, blob), "image": blob, "metadata": it.metadata}
            for it, blob in zip(body.items, blobs)]
    pixels = await run_in_threadpool(videos.video_pixels, svc.engine, clips)  # (n, F, 3, H, W)
    return rows, await svc.engine.itc_images(pixels, adapter)


async def _maintain(svc, tbl) -> None:
    """After an add, off the request: index a space past the threshold (one at a time per process)."""
    if svc.lock(f"index:{tbl.name}").locked():
        return
    async with svc.lock(f"index:{tbl.name}"):
        try:
            await run_in_threadpool(svc.galleries.maintain, tbl)
        except Exception:  # noqa: BLE001 - maintenance must never fail an add; the next add tries again
            log.exception("gallery %s: index maintenance failed", tbl.name)


@router.post("/galleries/{name}/index", response_model=GalleryInfo, tags=["galleries"])
async def index_gallery(name: str, body: GalleryIndex, svc: ServicesDep) -> GalleryInfo:
    """Build (or rebuild) the IVF-PQ index of `adapter`'s vectors now, whatever the gallery's size."""
    svc.require_task("retrieve")
    tbl = await open_gallery(svc, name)
    adapter = svc.registry.resolve("retrieve", body.adapter, video=svc.galleries.kind(tbl) == "video")
    if await run_in_threadpool(tbl.count_rows) < 256:  # before computing any vector
        raise Unprocessable(f"gallery {name!r} has under 256 items: too few to train an index (exact search is used)")
    async with svc.lock(name):
        await gallery_vectors(svc, tbl, svc.galleries.kind(tbl), adapter)
    async with svc.lock(f"index:{name}"):
        await run_in_threadpool(svc.galleries.build_index, tbl, space(svc, adapter)[1])
    return await _gallery_info(svc, tbl)


@router.post("/galleries/{name}/items/delete", response_model=GalleryChange, tags=["galleries"])
async def delete_items(name: str, body: GalleryDeleteItems, svc: ServicesDep) -> GalleryChange:
    tbl = await open_gallery(svc, name)
    removed = await run_in_threadpool(svc.galleries.remove, tbl, body.ids)
    return GalleryChange(gallery=name, removed=removed, size=await run_in_threadpool(tbl.count_rows))
