"""Task routes: POST /caption, /vqa, /retrieve. HTTP in, engine calls out; no tensors here."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from server import retrieval, videos
from server.deps import ServicesDep, require_api_key
from server.errors import Unprocessable
from server.inputs import check_text, read_task_body
from server.registry import FROZEN
from server.schemas import (CaptionFanoutResponse, CaptionRequest, CaptionResponse, RetrieveFanoutResponse,
                            RetrieveRequest, RetrieveResponse, VqaFanoutResponse, VqaRequest, VqaResponse)

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["tasks"])


def _body_doc(model) -> dict:
    """OpenAPI for routes that read JSON or multipart themselves."""
    schema = model.model_json_schema()
    files = {f: {"type": "string", "format": "binary"} for f in ("image", "video") if f in schema["properties"]}
    form = {**schema, "properties": {**schema["properties"], **files}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema},
                                                          "multipart/form-data": {"schema": form}}}}


def _check_generation(body, s) -> None:
    """num_beams / max_new_tokens (>= 1 by the schema) within the settings' limits."""
    if body.max_new_tokens is not None and body.max_new_tokens > s.max_new_tokens_limit:
        raise Unprocessable(f"max_new_tokens: {body.max_new_tokens} is over the limit of {s.max_new_tokens_limit}")
    if body.num_beams is not None and body.num_beams > s.max_beams_limit:
        raise Unprocessable(f"num_beams: {body.num_beams} is over the limit of {s.max_beams_limit}")


def resolve_adapters(svc, task: str, body, video: bool = False) -> list[str | None]:
    """The adapters a request runs with: [its one] (none named: the task's default, its video
    default when `video`) or, for a fan-out (`adapters`), each named one in order (404/422 for
    the first bad name; None = frozen backbone)."""
    if body.adapters is None:
        return [svc.registry.resolve(task, body.adapter, video)]
    if len(body.adapters) > svc.settings.max_fanout:
        raise Unprocessable(f"adapters: {len(body.adapters)} is over the limit of {svc.settings.max_fanout}")
    names = [svc.registry.resolve(task, name) for name in body.adapters]
    if len(set(names)) != len(names):  # e.g. the task default named and "none"-resolved twice
        raise Unprocessable("adapters: two names resolve to the same adapter")
    return names


@router.post("/caption", response_model=CaptionResponse | CaptionFanoutResponse,
             openapi_extra=_body_doc(CaptionRequest))
async def caption(request: Request, svc: ServicesDep) -> CaptionResponse | CaptionFanoutResponse:
    """Caption an image with the named adapter (or the caption default); with `adapters`,
    once per adapter: one decode, one ViT pass shared by adapters leaving it frozen."""
    s = svc.settings
    svc.require_task("caption")
    body, raw = await read_task_body(request, CaptionRequest, s, svc.engine.decode_pool)
    _check_generation(body, s)
    adapters = resolve_adapters(svc, "caption", body)
    pixels, keys = await svc.engine.image_pixels(raw)
    texts = await asyncio.gather(*(svc.engine.caption(pixels, a, max_new_tokens=body.max_new_tokens,
                                                      num_beams=body.num_beams, keys=keys) for a in adapters))
    results = [CaptionResponse(caption=text, adapter=a or FROZEN) for a, text in zip(adapters, texts)]
    return results[0] if body.adapters is None else CaptionFanoutResponse(per_adapter=results)


@router.post("/vqa", response_model=VqaResponse | VqaFanoutResponse, response_model_exclude_none=True,
             openapi_extra=_body_doc(VqaRequest))
async def vqa(request: Request, svc: ServicesDep) -> VqaResponse | VqaFanoutResponse:
    """Answer a question about an image or a video (beam search, by default 3 beams and at
    most 10 tokens); with `candidates`, rank them by log-likelihood instead; with `adapters`,
    once per adapter (one decode, one ViT pass shared by adapters leaving it frozen). No
    adapter named: the vqa default; for a video, the video-vqa default when usable."""
    s = svc.settings
    svc.require_task("vqa")
    body, raw = await read_task_body(request, VqaRequest, s, svc.engine.decode_pool, files=("image", "video"))
    check_text(body.question, s, "question")
    _check_generation(body, s)
    if body.candidates is not None:
        for name in ("num_beams", "max_new_tokens"):
            if getattr(body, name) is not None:
                raise Unprocessable(f"{name}: generation option; candidates are ranked, not generated")
        if len(body.candidates) > s.max_candidates:
            raise Unprocessable(f"candidates: {len(body.candidates)} is over the limit of {s.max_candidates}")
        for i, cand in enumerate(body.candidates):
            check_text(cand, s, f"candidates[{i}]")
        if len(set(body.candidates)) != len(body.candidates):
            raise Unprocessable("candidates: must be unique")
    adapters = resolve_adapters(svc, "vqa", body, video=body.video is not None)  # a file: body.video is a marker
    if body.video is not None:  # (1, F, 3, H, W); a multipart file arrived as `raw`
        pixels, keys = await videos.pixels_of(svc, raw if raw is not None else body.video, body.num_frames)
    else:
        pixels, keys = await svc.engine.image_pixels(raw)
    ids = await run_in_threadpool(svc.engine.question_ids, body.question)

    async def one(adapter) -> VqaResponse:
        if body.candidates is None:
            answer = await svc.engine.vqa(pixels, ids, adapter, max_new_tokens=body.max_new_tokens,
                                          num_beams=body.num_beams, keys=keys)
            return VqaResponse(answer=answer, adapter=adapter or FROZEN)
        scores = await svc.engine.vqa_rank(pixels, ids, body.candidates, adapter, keys=keys)
        best = max(range(len(scores)), key=scores.__getitem__)
        return VqaResponse(answer=body.candidates[best], adapter=adapter or FROZEN,
                           scores=dict(zip(body.candidates, scores)))

    results = await asyncio.gather(*(one(a) for a in adapters))
    return results[0] if body.adapters is None else VqaFanoutResponse(per_adapter=results)


@router.post("/retrieve", response_model=RetrieveResponse | RetrieveFanoutResponse, response_model_exclude_none=True)
async def retrieve(body: RetrieveRequest, svc: ServicesDep) -> RetrieveResponse | RetrieveFanoutResponse:
    """ITC top-k, then ITM re-rank: text -> image or video (gallery or inline items), image or
    video -> text; with `adapters`, once per adapter (inline images and videos decoded once)."""
    svc.require_task("retrieve")
    if body.adapters is None:
        return await retrieval.retrieve(svc, body)
    adapters = resolve_adapters(svc, "retrieve", body)
    shared = retrieval.Decoded()
    results = await asyncio.gather(*(retrieval.retrieve(svc, body, adapter=a or FROZEN, decoded=shared)
                                     for a in adapters))
    return RetrieveFanoutResponse(per_adapter=results)
