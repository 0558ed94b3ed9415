"""Image decoding: what each PIL mode becomes, and what is refused (unit level; the
HTTP-level catalogue is in test_server_bad_input.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from server.errors import InvalidImage, PayloadTooLarge
from server.images import b64decode, decode_image, to_rgb

LIMITS = dict(max_bytes=1_000_000, max_pixels=1_000_000)


def encode(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_sixteen_bit_grey_is_rescaled_not_clipped():
    im16 = Image.new("I;16", (3, 1))
    im16.frombytes(np.array([[0, 32896, 65535]], dtype="<u2").tobytes())
    im = decode_image(encode(im16), **LIMITS)
    assert im.mode == "RGB" and np.asarray(im)[0, :, 0].tolist() == [0, 128, 255]


def test_float_and_int32_grey_are_stretched_to_8_bits():
    f = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(f))[0, :, 0].tolist() == [0, 127, 255]
    flat = Image.fromarray(np.full((2, 2), 7, dtype=np.int32), "I")
    assert np.asarray(to_rgb(flat)).max() == 0  # no range: black, not a division by zero


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 255))  # opaque red
    rgba.putpixel((1, 0), (0, 0, 255, 0))  # fully transparent blue
    out = np.asarray(decode_image(encode(rgba), **LIMITS))
    assert out[0, 0].tolist() == [255, 0, 0] and out[0, 1].tolist() == [255, 255, 255]
    la = Image.new("LA", (1, 1), (0, 0))
    assert np.asarray(decode_image(encode(la), **LIMITS))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("mode,fmt", [("1", "PNG"), ("L", "PNG"), ("P", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"),
                                      ("YCbCr", "JPEG"), ("RGB", "BMP"), ("RGBA", "WEBP"), ("RGB", "TIFF")])
def test_every_mode_becomes_rgb_of_the_same_size(mode, fmt):
    im = Image.new("RGB", (5, 3), (10, 200, 30)).convert(mode)
    out = decode_image(encode(im, fmt), **LIMITS)
    assert out.mode == "RGB" and out.size == (5, 3)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (4, 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif)
    assert decode_image(buf.getvalue(), **LIMITS).size == (2, 4)


def test_refusals():
    with pytest.raises(InvalidImage, match="zero bytes"):
        decode_image(b"", **LIMITS)
    with pytest.raises(PayloadTooLarge, match="over the limit"):
        decode_image(b"x" * 2_000_000, **LIMITS)
    with pytest.raises(InvalidImage, match="not an image"):
        decode_image(b"GIF89a but not really" * 3, **LIMITS)
    with pytest.raises(PayloadTooLarge, match="refused before decoding"):
        decode_image(encode(Image.new("L", (2000, 1000))), **LIMITS)
    png = encode(Image.new("RGB", (64, 64), (1, 2, 3)))
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        decode_image(png[:-40], **LIMITS)
    with pytest.raises(InvalidImage, match="not an image"):  # formats outside the accepted list (ICO)
        decode_image(encode(Image.new("RGB", (16, 16)), "ICO"), **LIMITS)


def test_base64_variants():
    assert b64decode("aGVsbG8=") == b"hello"
    assert b64decode("data:image/png;base64,aGVsbG8=") == b"hello"
    assert b64decode("aGVs\nbG8=") == b"hello"
    assert b64decode("-_8") == b"\xfb\xff"  # URL-safe alphabet, padding optional
    with pytest.raises(InvalidImage, match="not valid base64"):
        b64decode("abc$")
