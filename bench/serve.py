"""Serving throughput and latency: the unitrans server (dynamic batching, mixed
per-request adapters) vs one-at-a-time transformers `BlipForConditionalGeneration.generate`
on the same weights, side by side in one run.

    .venv/bin/python bench/serve.py                       # concurrency 1, 8, 32; ~2-4 minutes
    .venv/bin/python bench/serve.py --requests 64 --time-budget 30
    .venv/bin/python bench/serve.py --size base --concurrency 1 32 --requests 64 \
        --baseline-requests 12 --time-budget 240        # BLIP-base size: model time dominates
    .venv/bin/python bench/serve.py --levels vqa         # VQA only: any-length vs equal-length batching
    .venv/bin/python bench/serve.py --levels ceiling fanout cache   # bench/serve_ceiling.py: the model-alone
                                                          # ceiling, fan-out, 5 questions with/without cache

Workload: greedy captions of distinct images, at most `--max-new-tokens` tokens. Server
requests cycle through the adapters (caption adapters of models/adapters when
present, else VCRA and LoRA adapters made here with random non-zero vectors, plus
"none"); the baseline runs the frozen weights (transformers has no per-request
adapters). The server runs in its own process on 127.0.0.1, driven by closed-loop
clients (each sends its next request when the previous answer arrives); each
level stops after --requests requests or --time-budget seconds. Baseline latency
includes image preprocessing, as the server's does; the server's also includes
HTTP, JSON and base64. The baseline runs in segments before, between and after the
server levels, so both see the same drift in the load of shared cores.

The VQA level (bench/serve_vqa.py) asks questions of mixed token lengths and compares
the server's any-length batching with the old equal-length-only batching, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import BlipConfig, BlipForConditionalGeneration  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from adapters import create_adapter, save_adapter, tasks  # noqa: E402
from adapters.backbone import Backbone  # noqa: E402
from bench import serve_ceiling, serve_vqa  # noqa: E402
from bench.closed_loop import closed_loop, pct  # noqa: E402
from client import Client, ConnectionFailed  # noqa: E402

SHIPPED = ROOT / "models" / "blip-shapes"
SHIPPED_ADAPTERS = ROOT / "models" / "adapters"
WORDS = ["a picture of", "a red circle left of a blue square", "two green triangles", "one yellow star",
         "what colour is the circle ?", "yes", "no", "above", "below"]


def backbone_dir(work: Path, size: str = "small") -> Path:
    """small: the shipped default, else a random BLIP of its size (hidden 128, 4 layers,
    64 px). base: a random BLIP at BlipConfig() defaults (ViT-B/16 384 px, BERT-base)."""
    if size == "base":
        from bench.backbone import base_backbone

        torch.manual_seed(0)
        return base_backbone().save_pretrained(work / "blip-base-random")
    if (SHIPPED / "config.json").is_file():
        return SHIPPED
    from training.tokenizer import blip_text_config_ids, build_processor, build_tokenizer

    processor = build_processor(build_tokenizer(WORDS), 64)
    config = BlipConfig(
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           image_size=64, patch_size=8),
        text_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                         encoder_hidden_size=128, max_position_embeddings=64,
                         **blip_text_config_ids(processor.tokenizer)),
        image_text_hidden_size=64,
    )
    torch.manual_seed(0)
    return Backbone.from_config(config, processor).save_pretrained(work / "blip-small-random")


def adapter_names(bb_dir: Path, work: Path) -> tuple[Path, list[str]]:
    """(adapter dir, caption adapter names to cycle through, 'none' included)."""
    bb = Backbone.from_dirs(bb_dir)
    if SHIPPED_ADAPTERS.is_dir():
        from adapters import read_adapter_meta

        names = []
        for p in sorted(SHIPPED_ADAPTERS.glob("*.safetensors")):
            meta = read_adapter_meta(p)
            if meta.task == "caption" and meta.backbone_fingerprint == bb.fingerprint:
                names.append(p.stem)
        if names:
            return SHIPPED_ADAPTERS, names + ["none"]
    out = work / "adapters"
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, kind in enumerate(["vcra", "vcra", "vcra", "lora"]):
        adapter = create_adapter(kind, bb, task="caption", rank=8, seed=0)
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if kind == "vcra" else 0.05))
        save_adapter(adapter, out / f"bench-{kind}-{i}.safetensors", recipe={"bench": True})
        names.append(f"bench-{kind}-{i}")
    return out, names + ["none"]


def make_images(n: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# -- baseline -----------------------------------------------------------------------------
class Baseline:
    """transformers' BlipForConditionalGeneration on the same weights, one image per generate call."""

    def __init__(self, bb_dir: Path, images: list[bytes], max_new_tokens: int):
        self.bb = Backbone.from_dirs(bb_dir)  # the processor the server uses
        self.model = BlipForConditionalGeneration.from_pretrained(str(bb_dir)).eval()
        # generate() swaps [CLS] for BOS and drops the trailing [SEP] itself: hand it the raw prompt
        self.enc = self.bb.processor.tokenizer([tasks.CAPTION_PROMPT], return_tensors="pt")
        self.images, self.max_new_tokens = images, max_new_tokens
        self.lat: list[float] = []
        self.wall = 0.0
        self.segments: list[float] = []  # req/s of each segment: the machine's load drifts

    def caption(self, i: int) -> str:
        pv = self.bb.processor.image_processor([Image.open(io.BytesIO(self.images[i % len(self.images)])).convert("RGB")],
                                               return_tensors="pt").pixel_values
        ids = self.model.generate(pixel_values=pv, input_ids=self.enc.input_ids.clone(),
                                  attention_mask=self.enc.attention_mask, max_new_tokens=self.max_new_tokens,
                                  do_sample=False, num_beams=1)
        return self.bb.processor.tokenizer.decode(ids[0, self.enc.input_ids.shape[1] - 1:], skip_special_tokens=True)

    def segment(self, n: int, budget: float) -> None:
        start, done = time.perf_counter(), 0
        with torch.inference_mode():
            for i in range(n):
                t0 = time.perf_counter()
                self.caption(len(self.lat))
                self.lat.append(time.perf_counter() - t0)
                done += 1
                if time.perf_counter() - start > budget:
                    break
        wall = time.perf_counter() - start
        self.wall += wall
        self.segments.append(done / wall)

    def summary(self) -> dict:
        return {"n": len(self.lat), "rps": len(self.lat) / self.wall, "p50": pct(self.lat, 50),
                "p99": pct(self.lat, 99)}


# -- server -------------------------------------------------------------------------------
def start_server(bb_dir: Path, adapters: Path, data: Path, args, module: str = "server") -> tuple[subprocess.Popen, str]:
    """`python -m <module>` (the server, or bench.old_vqa_server) on a free loopback port, once ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNITRANS_TORCH_THREADS": str(args.threads),
           "UNITRANS_QUEUE_SIZE": "1024", "UNITRANS_DEFAULT_CAPTION_ADAPTER": "none",
           "UNITRANS_REQUEST_TIMEOUT_S": str(max(60.0, args.time_budget))}  # a BLIP-base batch can take minutes
    cmd = [sys.executable, "-m", module, "--backbone", str(bb_dir), "--adapters", str(adapters), "--data",
           str(data), "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", str(args.max_batch_size),
           "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    with Client(url, timeout=5) as c:
        while True:
            try:
                if c.ready()["ready"]:
                    return proc, url
            except ConnectionFailed:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)


async def load(url: str, images: list[bytes], names: list[str], concurrency: int, n: int, budget: float,
               max_new_tokens: int) -> dict:
    """Closed loop of caption requests, image i % len and adapter i % len each."""
    async def caption(c, i):
        await c.caption(images[i % len(images)], adapter=names[i % len(names)], max_new_tokens=max_new_tokens)

    return await closed_loop(url, concurrency, n, budget, caption)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="closed-loop client counts")
    p.add_argument("--requests", type=int, default=256, help="max requests per level (x concurrency/32, min 32)")
    p.add_argument("--baseline-requests", type=int, default=64,
                   help="one-at-a-time generate calls, in segments run before, between and after the server levels")
    p.add_argument("--time-budget", type=float, default=45.0, help="seconds per level at most")
    p.add_argument("--max-new-tokens", type=int, default=20, help="caption length limit, same for both")
    p.add_argument("--max-batch-size", type=int, default=32, help="server batch limit")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="server batch wait (the server default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, server and baseline alike")
    p.add_argument("--size", choices=["small", "base"], default="small",
                   help="small: the shipped default; base: a random BLIP-base-size model (slow: ~2 s per caption)")
    p.add_argument("--levels", nargs="+", choices=["caption", "vqa", "ceiling", "fanout", "cache"],
                   default=["caption", "vqa", "ceiling", "fanout", "cache"],
                   help="caption: server vs transformers generate; vqa: any-length vs equal-length batching; "
                        "ceiling / fanout / cache: bench/serve_ceiling.py")
    p.add_argument("--vqa-concurrency", type=int, nargs="+", default=[8, 32], help="closed-loop clients, VQA level")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # from_pretrained lists the retrieval/VQA keys it does not use

    work = Path(tempfile.mkdtemp(prefix="unitrans-bench-"))
    bb_dir = backbone_dir(work, args.size)
    adapters, names = adapter_names(bb_dir, work)
    size = BlipConfig.from_pretrained(str(bb_dir)).vision_config.image_size
    images = make_images(64, size)
    print(f"backbone {bb_dir.name}; {args.threads} torch thread(s); server batch <= {args.max_batch_size}, "
          f"wait {args.max_wait_ms} ms; {serve_vqa.load_average()}", flush=True)
    if "caption" in args.levels:
        caption_levels(bb_dir, adapters, names, images, work, args)
    if "vqa" in args.levels:
        print(f"\nVQA: questions of {len(serve_vqa.QUESTIONS)} phrasings, mixed token lengths; the adapters "
              f"directory's 'vqa' adapter if it fits, else the frozen backbone", flush=True)
        lines = serve_vqa.run_vqa_levels(lambda module: start_server(bb_dir, adapters, work / f"data-{module}", args,
                                                                     module), args, images)
        print("\n" + "\n".join(lines))
    if {"ceiling", "fanout", "cache"} & set(args.levels):
        print("\nceiling, fan-out and image cache (bench/serve_ceiling.py)", flush=True)
        serve_ceiling.run(bb_dir, work, images, names, adapters,
                          lambda adapter_dir: start_server(bb_dir, adapter_dir, work / f"data-{time.time_ns()}", args),
                          load, args)
    print(f"\n{serve_vqa.load_average()}")


def caption_levels(bb_dir: Path, adapters: Path, names: list[str], images: list[bytes], work: Path, args) -> None:
    print(f"captions: adapters cycled: {', '.join(names)}; at most {args.max_new_tokens} tokens", flush=True)
    base = Baseline(bb_dir, images, args.max_new_tokens)
    seg = max(8, args.baseline_requests // (len(args.concurrency) + 1))
    base.segment(2, 30)  # warm-up, then reset
    base.lat, base.wall, base.segments = [], 0.0, []

    proc, url = start_server(bb_dir, adapters, work / "data", args)
    rows = []
    try:
        with Client(url) as c:  # same weights: the server's frozen caption is transformers' caption
            same = c.caption(images[0], adapter="none", max_new_tokens=args.max_new_tokens)["caption"]
        with torch.inference_mode():
            print(f"server 'none' caption == transformers caption (image 0): {same == base.caption(0).strip()}")
        asyncio.run(load(url, images, names, 4, 8, 30, args.max_new_tokens))  # warm-up
        for conc in args.concurrency:
            base.segment(seg, args.time_budget / 2)  # baseline segments interleaved with the server levels
            n = max(32, args.requests * conc // 32)
            r = asyncio.run(load(url, images, names, conc, n, args.time_budget, args.max_new_tokens))
            rows.append((conc, r))
            print(f"server c={conc:<3} {r['n']:4d} req  {r['rps']:7.1f} req/s  p50 {r['p50'] * 1000:7.0f} ms  "
                  f"p99 {r['p99'] * 1000:7.0f} ms   (baseline segment before it: {base.segments[-1]:.1f} req/s)",
                  flush=True)
        base.segment(seg, args.time_budget / 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    base_s = base.summary()
    print(f"baseline segments (req/s): {', '.join(f'{x:.1f}' for x in base.segments)}")
    base = base_s

    print("\n| mode | concurrency | requests | req/s | p50 ms | p99 ms | vs baseline |")
    print("|---|---|---|---|---|---|---|")
    print(f"| transformers generate, one at a time | 1 | {base['n']} | {base['rps']:.1f} | {base['p50'] * 1000:.0f} | "
          f"{base['p99'] * 1000:.0f} | 1.0x |")
    for conc, r in rows:
        print(f"| unitrans server, mixed adapters | {conc} | {r['n']} | {r['rps']:.1f} | {r['p50'] * 1000:.0f} | "
              f"{r['p99'] * 1000:.0f} | {r['rps'] / base['rps']:.1f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
