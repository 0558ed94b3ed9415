"""Video QA latency against frame count: one request, the shipped model and VQA adapter.

    .venv/bin/python bench/video_vqa.py                       # 1, 4, 8, 16 frames, 5 repeats
    .venv/bin/python bench/video_vqa.py --frames 1 8 --repeats 3

The clip is the README's example (docs/example_clip.py: a red circle moving, 16 frames,
64 px MP4). Per frame count it prints the median of --repeats timed runs, after one warm-up,
of: decoding + sampling the MP4 (PyAV, the server's request-side step), the processor's
pixels, and the model call (`predict.answers` with the server's VQA defaults: 3 beams, at
most 10 tokens) through an adapter-table routing, as the server's worker runs it. The ViT
runs once per frame and the fusion encoder and decoder cross-attend F x 65 tokens, so the
model time grows with F. Numbers on shared cores include whatever else runs: note the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters import AdapterTable, predict, tasks  # noqa: E402
from adapters.backbone import Backbone  # noqa: E402
from adapters.backbone.frames import decode_video  # noqa: E402
from docs.example_clip import OUT as CLIP, frames, mp4_bytes  # noqa: E402

QUESTION = "what colour is the circle ?"


def _median_ms(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the test server uses 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bb = Backbone.from_dirs(ROOT / "models" / "blip-shapes")
    table = AdapterTable(bb, capacity=4)
    table.load("vqa", ROOT / "models" / "adapters" / "vqa.safetensors")
    data = CLIP.read_bytes() if CLIP.is_file() else mp4_bytes(frames())
    ids = predict.question_ids(bb, [QUESTION], 40)
    print(f"video QA, one request: {len(data)} byte MP4, adapter 'vqa', {args.threads} torch thread(s); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'frames':>6} {'decode ms':>10} {'pixels ms':>10} {'model ms':>10}  answer")
    for n in args.frames:
        decode_ms, clip = _median_ms(lambda: decode_video(data, n), args.repeats)
        pixel_ms, px = _median_ms(lambda: tasks.video_pixels(bb, [clip]), args.repeats)  # (1, F, 3, H, W)

        def answer():
            with torch.inference_mode():
                return predict.answers(bb, px, ids, routing=table.routing(["vqa"]))[0]

        model_ms, text = _median_ms(answer, args.repeats)
        print(f"{n:>6} {decode_ms:>10.1f} {pixel_ms:>10.1f} {model_ms:>10.1f}  {text}")


if __name__ == "__main__":
    main(sys.argv[1:])
