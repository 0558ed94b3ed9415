"""Real small video files for tests, written with PyAV (MP4/H.264, WebM/VP8) and PIL (GIF).

    clip = moving_square_frames(12, size=32)           # list of (H, W, 3) uint8: a square moving right
    data = mp4(clip, fps=10)                            # bytes of a real MP4 file
    data = webm(clip); data = gif(clip)
"""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image


def moving_square_frames(n: int, size: int = 32, colour=(220, 30, 30), seed: int = 0) -> list[np.ndarray]:
    """n frames (size, size, 3) uint8 of a square moving left to right over a grey background."""
    rng = np.random.default_rng(seed)
    bg = np.full((size, size, 3), 128, np.uint8) + rng.integers(0, 8, (1, 1, 3), dtype=np.uint8)
    side = max(2, size // 4)
    out = []
    for i in range(n):
        f = bg.copy()
        x = int((size - side) * i / max(1, n - 1))
        f[size // 2 - side // 2: size // 2 + side // 2, x: x + side] = colour
        out.append(f)
    return out


def _encode(frames: list[np.ndarray], fmt: str, codec: str, fps: int, pix_fmt: str = "yuv420p") -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def mp4(frames: list[np.ndarray], fps: int = 10) -> bytes:
    return _encode(frames, "mp4", "libx264", fps)


def webm(frames: list[np.ndarray], fps: int = 10) -> bytes:
    return _encode(frames, "webm", "libvpx", fps)


def gif(frames: list[np.ndarray], ms_per_frame: int = 100) -> bytes:
    buf = io.BytesIO()
    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=ms_per_frame, loop=0)
    return buf.getvalue()


def webm_no_frames() -> bytes:
    """A WebM container with a VP8 video stream and zero frames (MP4 drops an empty stream)."""
    buf = io.BytesIO()
    container = av.open(buf, mode="w", format="webm")
    stream = container.add_stream("libvpx", rate=10)
    stream.width = stream.height = 32
    stream.pix_fmt = "yuv420p"
    container.start_encoding()
    container.close()
    return buf.getvalue()
