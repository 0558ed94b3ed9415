"""Image bytes -> a validated RGB `PIL.Image`, or a typed error saying what was wrong.

Accepted: PNG, JPEG (and camera MPO), GIF (first frame), BMP, WebP, TIFF. Every mode is converted to
RGB: 1, L, P, RGB, CMYK, YCbCr, LAB, HSV directly; modes with alpha (RGBA, LA, PA,
P with transparency) composited on white; 16-bit and 32-bit grey (I;16*, I, F)
rescaled to 8 bits first, since PIL's own conversion clips them to white.

Refused: empty or over-large byte strings (413), bytes that are no accepted image
format, truncated or corrupt files, zero-size images, and images over
`max_pixels` (decompression bombs: PIL's `DecompressionBombError` and our own
header check, both before any pixel is decoded).
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from server.errors import InvalidImage, PayloadTooLarge

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")  # JPEG covers cameras' multi-picture MPO files
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def b64decode(text: str, field: str = "image") -> bytes:
    """Standard or URL-safe base64, with or without a `data:...;base64,` prefix."""
    if not isinstance(text, str) or not text:
        raise InvalidImage(f"{field}: empty; send base64 image bytes")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    text = "".join(text.split())
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{field}: not valid base64 ({exc})") from None


def configure_pil(max_pixels: int | None) -> int | None:
    """PIL warns above MAX_IMAGE_PIXELS and raises above twice that; `decode_image` turns
    the warning into a refusal too. Process-wide in PIL: returns the previous value so the
    app can restore it at shutdown (tests run several apps in one process)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    return previous


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, field: str = "image") -> Image.Image:
    if not data:
        raise InvalidImage(f"{field}: zero bytes; send an image file")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{field}: {len(data)} bytes is over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = im.size
            if width < 1 or height < 1:
                raise InvalidImage(f"{field}: the image has zero size ({width}x{height})")
            if width * height > max_pixels:
                raise PayloadTooLarge(f"{field}: {width}x{height} pixels is over the limit of {max_pixels} "
                                      "(refused before decoding)")
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"{field}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise InvalidImage(f"{field}: not an image, or not one of {', '.join(FORMATS)}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise InvalidImage(f"{field}: corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    try:
        return to_rgb(im)
    except (OSError, ValueError) as exc:
        raise InvalidImage(f"{field}: cannot convert mode {im.mode} to RGB ({exc})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a malformed EXIF block is no reason to refuse the pixels
        pass
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _WIDE_GREY:
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        else:  # I (int32) and F (float32): no fixed range, stretch what is there
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode in ("PA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def encode_png(im: Image.Image) -> bytes:
    """RGB image -> PNG bytes (how galleries store what they were given, decoded once)."""
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
