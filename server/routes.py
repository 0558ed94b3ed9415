"""Task routes: POST /caption, /vqa, /retrieve. HTTP in, engine calls out; no tensors here."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from server import retrieval, videos
from server.deps import ServicesDep, require_api_key
from server.errors import Unprocessable
from server.inputs import check_text, load_image, read_task_body
from server.registry import FROZEN
from server.schemas import CaptionRequest, CaptionResponse, RetrieveRequest, RetrieveResponse, VqaRequest, VqaResponse

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


@router.post("/caption", response_model=CaptionResponse, openapi_extra=_body_doc(CaptionRequest))
async def caption(request: Request, svc: ServicesDep) -> CaptionResponse:
    """Caption an image with the named adapter (or the caption default)."""
    s = svc.settings
    svc.require_task("caption")
    body, raw = await read_task_body(request, CaptionRequest, s)
    _check_generation(body, s)
    adapter = svc.registry.resolve("caption", body.adapter)
    image = await load_image(raw, s)
    pixels = await run_in_threadpool(svc.engine.pixels, [image])
    text = await svc.engine.caption(pixels, adapter, max_new_tokens=body.max_new_tokens, num_beams=body.num_beams)
    return CaptionResponse(caption=text, adapter=adapter or FROZEN)


@router.post("/vqa", response_model=VqaResponse, response_model_exclude_none=True, openapi_extra=_body_doc(VqaRequest))
async def vqa(request: Request, svc: ServicesDep) -> VqaResponse:
    """Answer a question about an image or a video (beam search, by default 3 beams and at
    most 10 tokens); with `candidates`, rank them by log-likelihood instead."""
    s = svc.settings
    svc.require_task("vqa")
    body, raw = await read_task_body(request, VqaRequest, s, files=("image", "video"))
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
    adapter = svc.registry.resolve("vqa", body.adapter)
    if body.video is not None:  # (1, F, 3, H, W); a multipart file arrived as `raw`
        pixels = await videos.pixels_of(svc, raw if raw is not None else body.video, body.num_frames)
    else:
        image = await load_image(raw, s)
        pixels = await run_in_threadpool(svc.engine.pixels, [image])
    ids = await run_in_threadpool(svc.engine.question_ids, body.question)
    if body.candidates is None:
        answer = await svc.engine.vqa(pixels, ids, adapter, max_new_tokens=body.max_new_tokens,
                                      num_beams=body.num_beams)
        return VqaResponse(answer=answer, adapter=adapter or FROZEN)
    scores = await svc.engine.vqa_rank(pixels, ids, body.candidates, adapter)
    best = max(range(len(scores)), key=scores.__getitem__)
    return VqaResponse(answer=body.candidates[best], adapter=adapter or FROZEN,
                       scores=dict(zip(body.candidates, scores)))


@router.post("/retrieve", response_model=RetrieveResponse, response_model_exclude_none=True)
async def retrieve(body: RetrieveRequest, svc: ServicesDep) -> RetrieveResponse:
    """ITC top-k, then ITM re-rank: text -> image (gallery or inline images) or image -> text."""
    svc.require_task("retrieve")
    return await retrieval.retrieve(svc, body)
