"""A catalogue of bad inputs: each gets a 4xx with a JSON message, and the server
keeps serving (checked after every case). Accepted image modes are listed too."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import pytest
from PIL import Image

from client import Client
from tests.test_server_harness import images, noise, png, running_server

GOOD = images(1, seed=9)[0]
B64 = base64.b64encode(GOOD).decode()


def _png_header(width: int, height: int) -> bytes:
    """A PNG claiming a size, with a tiny (zlib-compressed) all-zero body: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    row = b"\x00" * (width + 1)
    body = zlib.compress(row * min(height, 64), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# (name, method, path, json body or raw bytes, expected status, expected error type or None)
CASES = [
    ("corrupt image", "POST", "/caption", {"image": _b64(GOOD[: len(GOOD) // 2])}, 400, "invalid_image"),
    ("non-image bytes", "POST", "/caption", {"image": _b64(b"%PDF-1.4 hello, not an image" * 10)}, 400,
     "invalid_image"),
    ("zero-byte image", "POST", "/caption", {"image": ""}, 400, "invalid_image"),
    ("zero-size image (0 x 10 PNG)", "POST", "/caption", {"image": _b64(_png_header(0, 10))}, 400, "invalid_image"),
    ("image over the byte limit", "POST", "/caption", {"image": _b64(b"\x89PNG" + b"\0" * 300_000)}, 413,
     "payload_too_large"),
    ("huge image (3000 x 3000 > max pixels)", "POST", "/caption", {"image": _b64(png(noise(3000)))}, 413,
     "payload_too_large"),
    ("decompression bomb (60000 x 60000 PNG of a few KB)", "POST", "/caption",
     {"image": _b64(_png_header(60000, 60000))}, 413, "payload_too_large"),
    ("bad base64", "POST", "/caption", {"image": "not*base64!!"}, 400, "invalid_image"),
    ("bad JSON", "POST", "/caption", b'{"image": "abc", ', 400, "bad_request"),
    ("JSON that is not an object", "POST", "/caption", b'["image"]', 422, "unprocessable"),
    ("empty body", "POST", "/vqa", b"", 400, "bad_request"),
    ("missing image", "POST", "/caption", {"adapter": "caption"}, 422, "unprocessable"),
    ("missing question", "POST", "/vqa", {"image": B64}, 422, "unprocessable"),
    ("empty question", "POST", "/vqa", {"image": B64, "question": ""}, 422, "unprocessable"),
    ("blank question", "POST", "/vqa", {"image": B64, "question": "   "}, 422, "unprocessable"),
    ("over-long question", "POST", "/vqa", {"image": B64, "question": "why " * 200}, 422, "unprocessable"),
    ("unknown field", "POST", "/caption", {"image": B64, "colour": "red"}, 422, "unprocessable"),
    ("wrong field type", "POST", "/caption", {"image": B64, "num_beams": "many"}, 422, "unprocessable"),
    ("num_beams over the limit", "POST", "/caption", {"image": B64, "num_beams": 50}, 422, "unprocessable"),
    ("max_new_tokens zero", "POST", "/caption", {"image": B64, "max_new_tokens": 0}, 422, "unprocessable"),
    ("too many candidates", "POST", "/vqa", {"image": B64, "question": "is there a star ?",
                                             "candidates": [f"a{i}" for i in range(100)]}, 422, "unprocessable"),
    ("duplicate candidates", "POST", "/vqa", {"image": B64, "question": "is there a star ?",
                                              "candidates": ["yes", "yes"]}, 422, "unprocessable"),
    ("empty candidate list", "POST", "/vqa", {"image": B64, "question": "q", "candidates": []}, 422,
     "unprocessable"),
    ("unknown adapter", "POST", "/caption", {"image": B64, "adapter": "no-such-adapter"}, 404, "not_found"),
    ("adapter of another task", "POST", "/caption", {"image": B64, "adapter": "vqa"}, 422, "wrong_task"),
    ("retrieval adapter for vqa", "POST", "/vqa", {"image": B64, "question": "q ?", "adapter": "retrieval"}, 422,
     "wrong_task"),
    ("path-like adapter name", "POST", "/caption", {"image": B64, "adapter": "../../etc/passwd"}, 422,
     "unprocessable"),
    ("path-like adapter load (encoded slashes)", "POST", "/adapters/..%2F..%2Fetc%2Fpasswd", None, 404, None),
    # the client resolves /adapters/.. to /, the demo page, which takes only GET
    ("dotted adapter load", "POST", "/adapters/..", None, 405, "method_not_allowed"),
    ("adapter load of a missing file", "POST", "/adapters/missing-file", None, 404, "not_found"),
    ("unload an adapter not loaded", "DELETE", "/adapters/never-loaded", None, 404, "not_found"),
    ("top_k zero", "POST", "/retrieve", {"text": "a red circle", "images": [{"id": "a", "image": B64}],
                                         "top_k": 0}, 422, "unprocessable"),
    ("top_k over the limit", "POST", "/retrieve", {"text": "a red circle", "images": [{"id": "a", "image": B64}],
                                                  "top_k": 1000}, 422, "unprocessable"),
    ("retrieve with both queries", "POST", "/retrieve", {"text": "a", "image": B64, "gallery": "g"}, 422,
     "unprocessable"),
    ("retrieve with no target", "POST", "/retrieve", {"text": "a red circle"}, 422, "unprocessable"),
    ("unknown gallery", "POST", "/retrieve", {"text": "a red circle", "gallery": "nope"}, 404, "not_found"),
    ("path-like gallery name", "POST", "/retrieve", {"text": "a red circle", "gallery": "../x"}, 422,
     "unprocessable"),
    ("duplicate inline ids", "POST", "/retrieve", {"text": "a", "images": [{"id": "a", "image": B64},
                                                                           {"id": "a", "image": B64}]}, 422,
     "unprocessable"),
    ("bad image among inline images", "POST", "/retrieve", {"text": "a", "images": [{"id": "a", "image": "!!"}]},
     400, "invalid_image"),
    ("body over the request limit", "POST", "/retrieve", {"text": "x" * 1_500_000, "gallery": "g"}, 413,
     "payload_too_large"),
    ("bad JSON to a typed route", "POST", "/retrieve", b"{not json", 422, "unprocessable"),
    ("gallery with a path-like name", "POST", "/galleries", {"name": "../../tmp/x"}, 422, "unprocessable"),
    ("add items to an unknown gallery", "POST", "/galleries/nope/items", {"items": [{"id": "a", "image": B64}]},
     404, "not_found"),
    ("unknown route", "GET", "/no/such/route", None, 404, "not_found"),
    ("wrong method", "GET", "/caption", None, 405, "method_not_allowed"),
]


@pytest.fixture(scope="module", params=[0, 1], ids=["decode-threads", "decode-processes"])
def url(request):
    """The catalogue twice: images (and task JSON bodies) decoded in threads, then in a decode process."""
    with running_server(max_image_bytes=200_000, max_image_pixels=4_000_000, max_top_k=50,
                        max_request_bytes=1_000_000, decode_workers=request.param) as u:
        yield u


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_4xx_with_message_and_server_keeps_serving(url, case):
    name, method, path, body, status, kind = case
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else (
        {"json": body} if body is not None else {})
    r = httpx.request(method, url + path, timeout=30, **kwargs)
    assert r.status_code == status, (name, r.status_code, r.text)
    error = r.json()["error"]
    assert error["message"], name
    if kind:
        assert error["type"] == kind, (name, error)
    assert httpx.get(url + "/healthz", timeout=30).json() == {"status": "ok"}


def test_still_serving_after_the_catalogue(url):
    with Client(url) as c:
        assert c.ready()["ready"] is True
        assert isinstance(c.caption(GOOD)["caption"], str)
        assert isinstance(c.vqa(GOOD, "is there a star ?")["answer"], str)


def test_wrong_task_adapter_and_multipart_errors(url):
    with Client(url) as c:
        with pytest.raises(Exception) as exc:
            c.caption(b"\x00\x01garbage", multipart=True)
        assert exc.value.status == 400 and "image" in exc.value.message
        r = httpx.post(url + "/caption", files={"other": ("x", GOOD)}, timeout=30)
        assert r.status_code == 422 and "image" in r.json()["error"]["message"]


# Accepted and converted to RGB: these PIL modes (PNG unless the mode needs JPEG/TIFF) and formats.
MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "I", "I;16", "F", "GIF", "WEBP", "BMP"]


def _in_mode(mode: str) -> bytes:
    base = noise(24, seed=5)
    if mode in ("GIF", "WEBP", "BMP"):  # formats rather than modes
        buf = io.BytesIO()
        (base.convert("P") if mode == "GIF" else base.convert("RGBA") if mode == "WEBP" else base).save(buf, mode)
        return buf.getvalue()
    if mode == "I;16":
        im = Image.new("I;16", base.size)
        im.frombytes(bytes(b for px in base.convert("L").tobytes() for b in (px, px)))
    else:
        im = base.convert(mode)
    fmt = {"CMYK": "JPEG", "YCbCr": "JPEG", "I": "TIFF", "F": "TIFF"}.get(mode, "PNG")
    if mode == "P":
        im.info["transparency"] = 0
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_is_converted(url, mode):
    data = _in_mode(mode)
    with Client(url) as c:
        out = c.caption(data, adapter="none")
    assert isinstance(out["caption"], str)


@pytest.mark.parametrize("path", ["/retrieve", "/caption"])
def test_streamed_body_over_the_limit_is_413(url, path):
    """No Content-Length (chunked): the body is counted as it arrives."""
    def body():
        yield b'{"text": "'
        for _ in range(15):
            yield b"x" * 100_000
        yield b'", "gallery": "g"}'

    r = httpx.post(url + path, content=body(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"
    assert httpx.get(url + "/healthz", timeout=30).json() == {"status": "ok"}
