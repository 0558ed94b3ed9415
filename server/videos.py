"""Video inputs of /vqa, /retrieve and video galleries -> sampled frames and pixels, off the worker.

A video arrives as a multipart file field `video` (/vqa), as base64 of a video file (MP4,
WebM, animated GIF) in JSON, or as a JSON list of base64 frames (any image format
`server/images.py` takes). Either way it is sampled uniformly to `num_frames` frames
(`adapters.backbone.frames`, the sampling training uses), in the request thread pool: the
model worker only sees the finished pixels (1, F, 3, H, W).

Limits (settings, `UNITRANS_*`): num_frames <= max_video_num_frames; a file's bytes,
duration, pixels per frame and frame count; a frame list's length and each frame's bytes
and pixels (the image limits). Bad bytes answer 400 `invalid_video` (or `invalid_image`
for a bad frame of a list), limits 413 `payload_too_large`, a bad num_frames 422.

Gallery videos are stored as their sampled frames, PNG each, packed in one blob
(`pack_frames`): a re-rank reads them back without decoding the video again.
"""

from __future__ import annotations

import io
import struct

from PIL import Image
from starlette.concurrency import run_in_threadpool

from adapters.backbone.frames import VideoError, VideoLimits, decode_video, sample
from server.errors import InvalidImage, InvalidVideo, PayloadTooLarge, Unprocessable
from server.image_features import pixel_keys
from server.images import b64decode, decode_image, encode_png
from server.settings import Settings


def limits(settings: Settings) -> VideoLimits:
    return VideoLimits(max_bytes=settings.max_video_bytes, max_pixels=settings.max_video_pixels,
                       max_seconds=settings.max_video_seconds, max_frames=settings.max_video_file_frames)


def num_frames(requested: int | None, settings: Settings) -> int:
    n = settings.video_num_frames if requested is None else requested
    if n > settings.max_video_num_frames:
        raise Unprocessable(f"num_frames: {n} is over the limit of {settings.max_video_num_frames}")
    return n


def decode_file(data: bytes, n: int, settings: Settings, field: str = "video") -> list[Image.Image]:
    """Video file bytes -> n RGB frames, or InvalidVideo (400) / PayloadTooLarge (413)."""
    try:
        return decode_video(data, n, limits(settings), field)
    except VideoError as exc:
        raise (PayloadTooLarge if exc.too_large else InvalidVideo)(str(exc)) from None


def decode_frame_list(items: list[str], n: int, settings: Settings, field: str = "video") -> list[Image.Image]:
    """Base64 frames -> n RGB frames sampled uniformly from them."""
    if not items:
        raise InvalidVideo(f"{field}: an empty frame list; send at least one frame")
    if len(items) > settings.max_video_list_frames:
        raise PayloadTooLarge(f"{field}: {len(items)} frames is over the limit of {settings.max_video_list_frames}")
    frames = [decode_image(b64decode(t, f"{field}[{i}]"), max_bytes=settings.max_image_bytes,
                           max_pixels=settings.max_image_pixels, field=f"{field}[{i}]") for i, t in enumerate(items)]
    return sample(frames, n)


def decode_any(value: str | list[str] | bytes, n: int, settings: Settings, field: str = "video") -> list[Image.Image]:
    """Raw file bytes, base64 of a file, or a list of base64 frames -> n frames."""
    if isinstance(value, list):
        return decode_frame_list(value, n, settings, field)
    if isinstance(value, bytes):
        return decode_file(value, n, settings, field)
    if not value:
        raise InvalidVideo(f"{field}: zero bytes; send a video file (MP4, WebM or GIF)")
    try:
        data = b64decode(value, field)
    except InvalidImage as exc:  # the same words, typed as the video they are about
        raise InvalidVideo(exc.message) from None
    return decode_file(data, n, settings, field)


async def load_video(value: str | list[str] | bytes, requested: int | None, settings: Settings,
                     field: str = "video") -> list[Image.Image]:
    """Decode in the request thread pool (never on the model worker)."""
    n = num_frames(requested, settings)
    return await run_in_threadpool(decode_any, value, n, settings, field)


def video_pixels(engine, videos: list[list[Image.Image]]):
    """Videos of equal frame counts -> (B, F, 3, H, W) by the backbone's processor."""
    from adapters import tasks

    return tasks.video_pixels(engine.bb, videos)


def keyed_video_pixels(engine, videos: list[list[Image.Image]]):
    """`video_pixels` and one content hash per video, request side: a fan-out's adapters share
    one ViT pass over the frames (videos are never cached: server/image_features.py)."""
    px = video_pixels(engine, videos)
    return px, pixel_keys(px)


# -- gallery storage ----------------------------------------------------------------------
def pack_frames(frames: list[Image.Image]) -> bytes:
    """Frames -> one blob: u32 count, then per frame u32 length + PNG bytes."""
    pngs = [encode_png(f) for f in frames]
    return struct.pack("<I", len(pngs)) + b"".join(struct.pack("<I", len(p)) + p for p in pngs)


def unpack_frames(blob: bytes) -> list[Image.Image]:
    (count,), at, out = struct.unpack_from("<I", blob), 4, []
    for _ in range(count):
        (size,) = struct.unpack_from("<I", blob, at)
        out.append(Image.open(io.BytesIO(blob[at + 4: at + 4 + size])).convert("RGB"))
        at += 4 + size
    return out


async def pixels_of(svc, value, requested: int | None, field: str = "video"):
    """One request's video (bytes, base64 or frame list) -> (pixels (1, F, 3, H, W), content keys),
    all off the worker."""
    frames = await load_video(value, requested, svc.settings, field)
    return await run_in_threadpool(keyed_video_pixels, svc.engine, [frames])
