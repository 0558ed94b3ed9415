"""HTTP clients for a unitrans server, sync and async, with the same methods.

    from client import Client, AsyncClient
    with Client("http://127.0.0.1:8000", api_key=None) as c:
        c.caption("cat.png")                        # {"caption": ..., "adapter": ...}
        c.vqa("cat.png", "what colour is it?", num_beams=1)  # {"answer": ..., "adapter": ...}
        c.vqa("cat.png", "what colour is it?", candidates=["red", "blue"])
        c.vqa("cat.png", "what colour is it?", adapters=["vqa", "vqa-b", "none"])  # {"per_adapter": [...]}
        c.create_gallery("shapes"); c.add_items("shapes", [{"id": "a", "image": "a.png"}])
        c.retrieve(text="a red circle", gallery="shapes", top_k=3)
    async with AsyncClient(url) as c:
        await c.caption(open("cat.png", "rb").read(), adapter="caption-shapes")

Images are paths, bytes, or file-like objects; they are sent base64 in JSON (or as
a multipart file with `multipart=True` for caption/vqa). Errors raise the typed
exceptions of `client.errors`. This package imports nothing of the server's.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

import httpx

from client.errors import ConnectionFailed, UnitransError, from_response

ImageLike = Any  # str | os.PathLike | bytes | a binary file object

# An idle pooled connection is dropped after this long, well under uvicorn's 5 s keep-alive
# timeout. httpx's default is also 5 s: a request sent on a connection idle ~5 s could meet
# the server closing it and fail (httpx.ReadError or RemoteProtocolError, "Server
# disconnected"); likeliest when the server's event loop runs late, i.e. under load.
KEEPALIVE_EXPIRY_S = 2.0


def image_bytes(image: ImageLike) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    if hasattr(image, "read"):
        return image.read()
    raise TypeError(f"an image is a path, bytes or a binary file object, not {type(image).__name__}")


def b64(image: ImageLike) -> str:
    return base64.b64encode(image_bytes(image)).decode()


def video_field(video) -> str | list[str]:
    """A video file (path, bytes, file object) -> its base64; a list of frames -> their base64s."""
    if isinstance(video, (list, tuple)):
        return [b64(f) for f in video]
    return b64(video)


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _form(fields: dict) -> dict:
    """Multipart form fields: lists (candidates, adapters) as repeated fields, the rest as strings."""
    return {k: list(v) if isinstance(v, (list, tuple)) else v if isinstance(v, str) else str(v)
            for k, v in fields.items()}


@dataclass
class Call:
    """One HTTP request, built the same way for both clients."""

    method: str
    path: str
    json: Any = None
    data: dict | None = None
    files: dict | None = None
    params: dict | None = None


class Requests:
    """Builds the requests of every endpoint; `_send` (sync or async) performs them."""

    def caption(self, image: ImageLike, *, adapter: str | None = None, adapters: list[str] | None = None,
                max_new_tokens: int | None = None, num_beams: int | None = None, multipart: bool = False):
        """{"caption", "adapter"}; with `adapters` (fan-out) {"per_adapter": [one such per adapter]}."""
        fields = _drop_none({"adapter": adapter, "adapters": adapters, "max_new_tokens": max_new_tokens,
                             "num_beams": num_beams})
        if multipart:
            return self._send(Call("POST", "/caption", data=_form(fields),
                                   files={"image": ("image", image_bytes(image))}))
        return self._send(Call("POST", "/caption", json={"image": b64(image), **fields}))

    def vqa(self, image: ImageLike | None, question: str, *, video=None, num_frames: int | None = None,
            adapter: str | None = None, adapters: list[str] | None = None, candidates: list[str] | None = None,
            max_new_tokens: int | None = None, num_beams: int | None = None, multipart: bool = False):
        """Generated answer (server defaults: 3 beams, at most 10 tokens), or with
        `candidates` the most likely of them and every candidate's log-likelihood; with
        `adapters` (fan-out) {"per_adapter": [one answer per adapter]}.
        Video: image=None, video= a file (MP4, WebM, GIF) or a list of frames, num_frames= sampled."""
        fields = _drop_none({"question": question, "adapter": adapter, "adapters": adapters,
                             "candidates": candidates, "max_new_tokens": max_new_tokens, "num_beams": num_beams,
                             "num_frames": num_frames})
        if multipart:
            field, media = ("video", video) if video is not None else ("image", image)
            return self._send(Call("POST", "/vqa", data=_form(fields), files={field: (field, image_bytes(media))}))
        media = {"video": video_field(video)} if video is not None else {"image": b64(image)}
        return self._send(Call("POST", "/vqa", json={**media, **fields}))

    def retrieve(self, *, text: str | None = None, image: ImageLike | None = None, video=None,
                 gallery: str | None = None, images: dict[str, ImageLike] | None = None, videos: dict | None = None,
                 texts: dict[str, str] | None = None, top_k: int = 5, num_frames: int | None = None,
                 adapter: str | None = None, adapters: list[str] | None = None, rerank: bool = True,
                 filter: dict | None = None):
        """text -> image/video (gallery= an image or video gallery, or images={id: image} / videos={id: video}) or
        image/video -> text (gallery= a text gallery, or texts={id: text}); filter= e.g. {"metadata.colour": "red"}
        restricts a gallery search. A video is a file or a list of frames.
        Returns {"results": [{id, score, itc}], ...}; with `adapters` (fan-out) {"per_adapter": [one such per
        adapter]}."""
        body = _drop_none({"text": text, "image": b64(image) if image is not None else None,
                           "video": video_field(video) if video is not None else None, "gallery": gallery,
                           "top_k": top_k, "num_frames": num_frames, "adapter": adapter, "adapters": adapters,
                           "rerank": rerank, "filter": filter})
        if videos is not None:
            body["videos"] = [{"id": k, "video": video_field(v)} for k, v in videos.items()]
        if images is not None:
            body["images"] = [{"id": k, "image": b64(v)} for k, v in images.items()]
        if texts is not None:
            body["texts"] = [{"id": k, "text": v} for k, v in texts.items()]
        return self._send(Call("POST", "/retrieve", json=body))

    # -- galleries ------------------------------------------------------------------------
    def create_gallery(self, name: str, kind: str = "image"):
        return self._send(Call("POST", "/galleries", json={"name": name, "kind": kind}))

    def galleries(self):
        return self._send(Call("GET", "/galleries"))

    def gallery(self, name: str):
        return self._send(Call("GET", f"/galleries/{name}"))

    def gallery_items(self, name: str):
        return self._send(Call("GET", f"/galleries/{name}/items"))

    def add_items(self, name: str, items: list[dict], *, adapter: str | None = None):
        """items: [{"id", "image": path/bytes}, {"id", "video": file or frame list} or {"id", "text"},
        optional "metadata": {...}]"""
        body_items = []
        for it in items:
            entry = {k: v for k, v in it.items() if k not in ("image", "video")}
            if it.get("image") is not None:
                entry["image"] = b64(it["image"])
            if it.get("video") is not None:
                entry["video"] = video_field(it["video"])
            body_items.append(entry)
        return self._send(Call("POST", f"/galleries/{name}/items", json=_drop_none({"items": body_items,
                                                                                   "adapter": adapter})))

    def delete_items(self, name: str, ids: list[str]):
        return self._send(Call("POST", f"/galleries/{name}/items/delete", json={"ids": list(ids)}))

    def delete_gallery(self, name: str):
        return self._send(Call("DELETE", f"/galleries/{name}"))

    # -- adapters and health ------------------------------------------------------------------
    def adapters(self):
        return self._send(Call("GET", "/adapters"))

    def load_adapter(self, name: str, *, pin: bool | None = None):
        return self._send(Call("POST", f"/adapters/{name}", params=_drop_none({"pin": pin})))

    def unload_adapter(self, name: str):
        return self._send(Call("DELETE", f"/adapters/{name}"))

    def health(self):
        return self._send(Call("GET", "/healthz"))

    def ready(self):
        return self._send(Call("GET", "/readyz"))

    def metrics(self):
        return self._send(Call("GET", "/metrics"))

    def _send(self, call: Call):
        raise NotImplementedError


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _result(response: httpx.Response):
    ctype = response.headers.get("content-type", "")
    body = response.json() if ctype.startswith("application/json") else response.text
    if response.status_code >= 400:
        raise from_response(response.status_code, body, response.headers)
    return body


def _kwargs(call: Call) -> dict:
    return _drop_none({"json": call.json, "data": call.data, "files": call.files, "params": call.params})


class Client(Requests):
    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 60.0, transport: httpx.BaseTransport | None = None):
        self.http = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport,
                                 limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S))

    def _send(self, call: Call):
        try:
            response = self.http.request(call.method, call.path, **_kwargs(call))
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"{call.method} {call.path}: {type(exc).__name__}: {exc}") from exc
        return _result(response)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(Requests):
    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 60.0, max_connections: int = 100):
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                              keepalive_expiry=KEEPALIVE_EXPIRY_S)
        self.http = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key), timeout=timeout, limits=limits)

    async def _send(self, call: Call):
        try:
            response = await self.http.request(call.method, call.path, **_kwargs(call))
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"{call.method} {call.path}: {type(exc).__name__}: {exc}") from exc
        return _result(response)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


__all__ = ["AsyncClient", "Client", "UnitransError"]
