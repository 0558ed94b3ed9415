"""Adapter and gallery routes: list/load/unload adapters; create, fill, empty, list, delete galleries."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from server.deps import ServicesDep, require_api_key
from server.errors import Conflict, NotFound, Unprocessable
from server.galleries import item_key
from server.images import encode_png
from server.inputs import check_text, load_b64_image
from server.registry import FROZEN, check_name
from server.retrieval import open_gallery
from server.schemas import (AdapterInfo, AdapterList, GalleryAdd, GalleryChange, GalleryCreate, GalleryDeleteItems,
                            GalleryInfo, GalleryList)
from server.settings import TASKS

router = APIRouter(dependencies=[Depends(require_api_key)])


# -- adapters ---------------------------------------------------------------------
def _info(svc, name: str) -> AdapterInfo:
    entry = svc.registry.loaded.get(name)
    meta = entry.meta if entry else svc.registry.header(name)
    defaults = [t for t in TASKS if svc.settings.default_adapter(t) == name]
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
def _gallery_info(svc, gallery) -> GalleryInfo:
    return GalleryInfo(name=gallery.name, kind=gallery.kind, size=len(gallery.items),
                       adapters=gallery.stored_adapters(), index=svc.galleries.index_kind(gallery))


@router.get("/galleries", response_model=GalleryList, tags=["galleries"])
async def list_galleries(svc: ServicesDep) -> GalleryList:
    galleries = [svc.galleries.get(n) for n in await run_in_threadpool(svc.galleries.names)]
    return GalleryList(galleries=[_gallery_info(svc, g) for g in galleries if g is not None])


@router.post("/galleries", response_model=GalleryInfo, status_code=201, tags=["galleries"])
async def create_gallery(body: GalleryCreate, svc: ServicesDep) -> GalleryInfo:
    async with svc.lock(body.name):
        if svc.galleries.get(body.name) is not None:
            raise Conflict(f"gallery {body.name!r} already exists")
        gallery = await run_in_threadpool(svc.galleries.create, body.name, body.kind)
    return _gallery_info(svc, gallery)


@router.get("/galleries/{name}", response_model=GalleryInfo, tags=["galleries"])
async def get_gallery(name: str, svc: ServicesDep) -> GalleryInfo:
    check_name(name, "gallery")
    gallery = svc.galleries.get(name)
    if gallery is None:
        raise NotFound(f"no gallery named {name!r}")
    return _gallery_info(svc, gallery)


@router.get("/galleries/{name}/items", tags=["galleries"])
async def list_items(name: str, svc: ServicesDep) -> dict:
    check_name(name, "gallery")
    gallery = svc.galleries.get(name)
    if gallery is None:
        raise NotFound(f"no gallery named {name!r}")
    return {"gallery": name, "items": [{"id": it["id"], "text": it.get("text"), "metadata": it.get("metadata", {})}
                                       for it in gallery.items]}


@router.delete("/galleries/{name}", tags=["galleries"])
async def delete_gallery(name: str, svc: ServicesDep) -> dict:
    check_name(name, "gallery")
    async with svc.lock(name):
        if svc.galleries.get(name) is None:
            raise NotFound(f"no gallery named {name!r}")
        await run_in_threadpool(svc.galleries.delete, name)
    return {"deleted": name}


@router.post("/galleries/{name}/items", response_model=GalleryChange, tags=["galleries"])
async def add_items(name: str, body: GalleryAdd, svc: ServicesDep) -> GalleryChange:
    """Add or replace items (by id); their ITC vectors are computed now with `adapter` (default:
    the retrieval default), and later for any other adapter on its first search."""
    s = svc.settings
    svc.require_task("retrieve")
    check_name(name, "gallery")
    gallery = svc.galleries.get(name)
    if gallery is None:
        raise NotFound(f"no gallery named {name!r}")
    if len(body.items) > s.max_inline_items:
        raise Unprocessable(f"{len(body.items)} items is over the limit of {s.max_inline_items} per request")
    if len({it.id for it in body.items}) != len(body.items):
        raise Unprocessable("item ids must be unique within one request")
    adapter = svc.registry.resolve("retrieve", body.adapter)
    entries, blobs = [], {}
    if gallery.kind == "image":
        images = []
        for i, it in enumerate(body.items):
            if it.image is None or it.text is not None:
                raise Unprocessable(f"items[{i}]: an image gallery takes 'image' (base64), not 'text'")
            images.append(await load_b64_image(it.image, s, f"items[{i}].image"))
        pngs = await run_in_threadpool(lambda: [encode_png(im) for im in images])
        for it, png in zip(body.items, pngs):
            key = item_key(it.id, png)
            blobs[f"{key}.png"] = png
            entries.append({"id": it.id, "key": key, "blob": f"{key}.png", "metadata": it.metadata})
        pixels = await run_in_threadpool(svc.engine.pixels, images)
        vecs = await svc.engine.itc_images(pixels, adapter)
    else:
        for i, it in enumerate(body.items):
            if it.text is None or it.image is not None:
                raise Unprocessable(f"items[{i}]: a text gallery takes 'text', not 'image'")
            check_text(it.text, s, f"items[{i}].text")
            entries.append({"id": it.id, "key": item_key(it.id, it.text), "text": it.text, "metadata": it.metadata})
        vecs = await svc.engine.itc_texts([it.text for it in body.items], adapter)
    vectors = (adapter or FROZEN, svc.registry.version(adapter), svc.backbone.fingerprint,
               [e["key"] for e in entries], vecs)
    async with svc.lock(name):
        gallery = open_gallery(svc, name, gallery.kind)  # may have been deleted meanwhile
        added, replaced = await run_in_threadpool(gallery.add, entries, blobs, vectors)
    return GalleryChange(gallery=name, added=added, replaced=replaced, size=len(gallery.items))


@router.post("/galleries/{name}/items/delete", response_model=GalleryChange, tags=["galleries"])
async def delete_items(name: str, body: GalleryDeleteItems, svc: ServicesDep) -> GalleryChange:
    check_name(name, "gallery")
    async with svc.lock(name):
        gallery = svc.galleries.get(name)
        if gallery is None:
            raise NotFound(f"no gallery named {name!r}")
        removed = await run_in_threadpool(gallery.remove, body.ids)
    return GalleryChange(gallery=name, removed=removed, size=len(gallery.items))

