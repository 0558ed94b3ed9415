"""Image decoding and preprocessing off the model's GIL: a pool of worker processes.

    pool = DecodePool(settings, backbone.processor.image_processor)   # decode_workers > 0
    pixels, keys = await pool.prepare(data, field="image")            # (1, 3, H, W) float32, content keys
    fields, image = await pool.parse_json(raw_body)                   # JSON + base64 of /caption, /vqa bodies
    pool.close()

With `decode_workers = 0` (the default) the server decodes in its thread pool, as before:
PIL and the processor release the GIL for much of the work, but not all of it, and the
model worker's Python (the decoding loop of `generate`) then waits for it. With N > 0,
N processes (spawned: no copy of the model, torch on one thread each) parse the JSON
body of /caption and /vqa and decode its base64 image, decode the image bytes, resize and
normalise, and hash the pixels; the server process validates the small remaining fields
and unpickles a tensor. Errors (bad JSON, bad base64, bad image, bomb, too many pixels)
come back as the same typed API errors, in the same order of precedence.

Either way a request reaches the batcher only once its body is read and its image
prepared: a slow upload holds its own connection, never a batch.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch

from server.errors import ApiError
from server.image_features import pixel_keys
from server.images import b64decode, decode_image
from server.inputs import json_object

DECODED_IMAGE = "<decoded by a decode worker>"  # stands in for the base64 string while the fields validate

_PROCESSOR = None  # the backbone's image processor, per worker process


def _init(processor) -> None:
    global _PROCESSOR
    _PROCESSOR = processor
    torch.set_num_threads(1)


def preprocess(processor, images) -> tuple[torch.Tensor, list[str]]:
    """PIL images -> float32 pixels (n, 3, H, W) as `adapters.tasks.pixels` makes them (before its
    device/dtype cast), and their content keys."""
    px = processor([im.convert("RGB") for im in images], return_tensors="pt").pixel_values
    return px, pixel_keys(px)


def _ready() -> bool:
    return _PROCESSOR is not None


def _decode_prepare(data: bytes, max_bytes: int, max_pixels: int, field: str):
    image = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, field=field)
    return preprocess(_PROCESSOR, [image])


def parse_json_body(raw: bytes) -> tuple[dict, bytes | ApiError | None]:
    """A task's JSON body -> (its fields, the image's base64 replaced by DECODED_IMAGE; the image
    bytes, or the error decoding them, raised only after the fields validate; None: no image string)."""
    data = json_object(raw)
    image = None
    if isinstance(data.get("image"), str):
        try:
            image = b64decode(data["image"])
        except ApiError as exc:
            image = exc
        data["image"] = DECODED_IMAGE
    return data, image


class DecodePool:
    def __init__(self, settings, processor):
        self.settings = settings
        self.executor = ProcessPoolExecutor(settings.decode_workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init, initargs=(processor,))

    async def start(self) -> None:
        """Spawn the workers now (they import torch: seconds), not on the first requests."""
        loop = asyncio.get_running_loop()
        n = self.settings.decode_workers
        await asyncio.gather(*(loop.run_in_executor(self.executor, _ready) for _ in range(n)))

    async def prepare(self, data: bytes, field: str = "image") -> tuple[torch.Tensor, list[str]]:
        s = self.settings
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, _decode_prepare, data, s.max_image_bytes, s.max_image_pixels, field)

    async def parse_json(self, raw: bytes) -> tuple[dict, bytes | ApiError | None]:
        return await asyncio.get_running_loop().run_in_executor(self.executor, parse_json_body, raw)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
