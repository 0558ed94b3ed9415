"""Render the README's example clip: one red circle moving left to right in the shapes world.

    .venv/bin/python -m docs.example_clip        # writes examples/red-circle-moving.mp4

Frames come from the world renderer (`training.shapes.render`, 64 px like the default
backbone's inputs), 16 frames at 8 fps, H.264 in MP4 through PyAV. Like the world's clips
(training.shapes.clips): one background noise for the whole clip (a still camera) and a move
of 0.3 image sides, inside the world's range (clips.SHIFT). Deterministic scene and pixels;
the encoded bytes may differ between runs (x264 threads), the frames barely.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import av
import numpy as np

from training.shapes.render import Group, Scene, render, sample_background

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "red-circle-moving.mp4"


def frames(n: int = 16, size: int = 64) -> list[np.ndarray]:
    """n RGB frames (size, size, 3): the circle's centre moves from x=0.35 to x=0.65 at y=0.5."""
    background = sample_background(np.random.default_rng(3))
    out = []
    for i in range(n):
        cx = 0.35 + 0.3 * i / (n - 1)
        scene = Scene(groups=(Group("red", "circle", 1, "all"),), size=size, background=background,
                      boxes=(((cx, 0.5, 0.28),),), jitter=((0, 0, 0),))
        out.append(np.asarray(render(scene, noise_seed=3)))
    return out


def mp4_bytes(clip: list[np.ndarray], fps: int = 8) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = clip[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in clip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else OUT
    out.write_bytes(mp4_bytes(frames()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
