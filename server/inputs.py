"""Request bodies -> validated models and decoded images, off the event loop.

/caption and /vqa take JSON (image as base64) or multipart/form-data (image as a
file field named `image`, /vqa's video as one named `video`; other fields as form
fields, `candidates` and `adapters` repeated or as a JSON list). Everything else takes
JSON through FastAPI's own body parsing.
"""

from __future__ import annotations

import json

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from server.errors import BadRequest, PayloadTooLarge, Unprocessable
from server.images import b64decode, decode_image
from server.settings import Settings

MULTIPART_IMAGE = "<multipart file>"



def json_object(raw: bytes) -> dict:
    """A request body that must be one JSON object: 400 if it is not JSON, 422 if not an object."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Unprocessable("body must be a JSON object")
    return data

def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def check_length(request: Request, settings: Settings) -> None:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_request_bytes:
        raise PayloadTooLarge(f"request body of {length} bytes is over the limit of {settings.max_request_bytes}")


async def read_task_body(request: Request, model: type[BaseModel], settings: Settings,
                         decode_pool=None, files: tuple[str, ...] = ("image",)) -> tuple[BaseModel, bytes | None]:
    """(validated body, raw bytes of the image, or of the video file sent as multipart field
    'video' when `files` allows it) from JSON or multipart; with a `decode_pool`
    (server/decode_pool.py) JSON parsing and the image's base64 decoding run in its processes
    (a JSON video stays in the body, for server/videos.py)."""
    check_length(request, settings)
    ctype = request.headers.get("content-type", "")
    image: bytes | None = None
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=settings.max_candidates + settings.max_fanout + 8)
        except Exception as exc:  # noqa: BLE001 - python-multipart raises several types for bad forms
            raise BadRequest(f"malformed multipart body ({exc})") from None
        data: dict = {}
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key not in files:
                        raise Unprocessable(f"unexpected file field {key!r}; send the file as "
                                            f"{' or '.join(repr(f) for f in files)}")
                    limit = settings.max_video_bytes if key == "video" else settings.max_image_bytes
                    image = await value.read(limit + 1)  # the decoder refuses what is over the limit
                    data[key] = MULTIPART_IMAGE
                elif key in ("candidates", "adapters"):  # repeated fields or one JSON list
                    data.setdefault(key, []).extend(_string_list(value, key))
                else:
                    data[key] = value
        finally:
            await form.close()  # spooled temp files
        if not any(data.get(f) == MULTIPART_IMAGE for f in files):
            image = None  # a base64 string sent as a plain form field
    else:
        raw = await request.body()
        if len(raw) > settings.max_request_bytes:
            raise PayloadTooLarge(f"request body is over the limit of {settings.max_request_bytes} bytes")
        if not raw:
            raise BadRequest("empty body; send JSON (or multipart/form-data with an 'image' file)")
        if decode_pool is not None:
            data, image = await decode_pool.parse_json(raw)
        else:
            data = json_object(raw)
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(_validation_message(exc)) from None
    if isinstance(image, Exception):  # the decode worker's base64 error, after the fields validated
        raise image
    if image is None and getattr(body, "image", None) is not None:
        image = b64decode(body.image)
    return body, image  # image None: a JSON video (server/videos.py reads body.video)


def _string_list(value: str, field: str) -> list[str]:
    text = value.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise Unprocessable(f"{field}: not a JSON list of strings") from None
        if not isinstance(parsed, list) or not all(isinstance(c, str) for c in parsed):
            raise Unprocessable(f"{field}: not a JSON list of strings")
        return parsed
    return [value]


async def load_image(data: bytes, settings: Settings, field: str = "image"):
    """Bytes -> RGB PIL image, decoded in the thread pool."""
    return await run_in_threadpool(decode_image, data, max_bytes=settings.max_image_bytes,
                                   max_pixels=settings.max_image_pixels, field=field)


async def load_b64_image(text: str, settings: Settings, field: str = "image"):
    return await load_image(b64decode(text, field), settings, field)


def check_text(text: str, settings: Settings, field: str) -> str:
    if not text or not text.strip():
        raise Unprocessable(f"{field}: empty")
    if len(text) > settings.max_text_chars:
        raise Unprocessable(f"{field}: {len(text)} characters is over the limit of {settings.max_text_chars}")
    return text
