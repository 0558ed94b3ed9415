"""Serving throughput and latency: the unitrans server (dynamic batching, mixed
per-request adapters) vs one-at-a-time transformers `BlipForConditionalGeneration.generate`
on the same weights, side by side in one run.

    .venv/bin/python bench/serve.py                       # concurrency 1, 8, 32; ~2-4 minutes
    .venv/bin/python bench/serve.py --requests 64 --time-budget 30

Workload: greedy captions of distinct images, at most `--max-new-tokens` tokens. Server
requests cycle through the adapters (caption adapters of models/adapters when
present, else VCRA and LoRA adapters made here with random non-zero vectors, plus
"none"); the baseline runs the frozen weights (transformers has no per-request
adapters). The server runs in its own process on 127.0.0.1, driven by closed-loop
clients (each sends its next request when the previous answer arrives); each
level stops after --requests requests or --time-budget seconds. Baseline latency
includes image preprocessing, as the server's does; the server's also includes
HTTP, JSON and base64.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
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
from client import AsyncClient, Client, ConnectionFailed  # noqa: E402

SHIPPED = ROOT / "models" / "blip-shapes"
SHIPPED_ADAPTERS = ROOT / "models" / "adapters"
WORDS = ["a picture of", "a red circle left of a blue square", "two green triangles", "one yellow star",
         "what colour is the circle ?", "yes", "no", "above", "below"]


def backbone_dir(work: Path) -> Path:
    """The shipped default, else a random BLIP of its size (hidden 128, 4 layers, 64 px)."""
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


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- baseline -----------------------------------------------------------------------------
def baseline(bb_dir: Path, images: list[bytes], n: int, budget: float, max_new_tokens: int) -> dict:
    bb = Backbone.from_dirs(bb_dir)  # for the processor and the prompt, exactly as the server builds them
    model = BlipForConditionalGeneration.from_pretrained(str(bb_dir)).eval()
    # generate() swaps [CLS] for BOS and drops the trailing [SEP] itself: hand it the raw prompt
    enc = bb.processor.tokenizer([tasks.CAPTION_PROMPT], return_tensors="pt")
    prompt_len = enc.input_ids.shape[1] - 1
    lat, texts, start = [], [], time.perf_counter()
    with torch.inference_mode():
        for i in range(n):
            t0 = time.perf_counter()
            pv = bb.processor.image_processor([Image.open(io.BytesIO(images[i % len(images)])).convert("RGB")],
                                              return_tensors="pt").pixel_values
            ids = model.generate(pixel_values=pv, input_ids=enc.input_ids.clone(), attention_mask=enc.attention_mask,
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            lat.append(time.perf_counter() - t0)
            if i < 4:
                texts.append(bb.processor.tokenizer.decode(ids[0, prompt_len:], skip_special_tokens=True))
            if time.perf_counter() - start > budget:
                break
    wall = time.perf_counter() - start
    return {"n": len(lat), "rps": len(lat) / wall, "p50": pct(lat, 50), "p99": pct(lat, 99), "texts": texts}


# -- server -------------------------------------------------------------------------------
def start_server(bb_dir: Path, adapters: Path, data: Path, args) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNITRANS_TORCH_THREADS": str(args.threads),
           "UNITRANS_QUEUE_SIZE": "1024", "UNITRANS_DEFAULT_CAPTION_ADAPTER": "none"}
    cmd = [sys.executable, "-m", "server", "--backbone", str(bb_dir), "--adapters", str(adapters), "--data",
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
    lat: list[float] = []
    counter = iter(range(n))
    start = time.perf_counter()

    async def worker(c: AsyncClient):
        for i in counter:
            if time.perf_counter() - start > budget:
                return
            t0 = time.perf_counter()
            await c.caption(images[i % len(images)], adapter=names[i % len(names)], max_new_tokens=max_new_tokens)
            lat.append(time.perf_counter() - t0)

    async with AsyncClient(url, timeout=300, max_connections=concurrency) as c:
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"n": len(lat), "rps": len(lat) / wall, "p50": pct(lat, 50), "p99": pct(lat, 99)}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="closed-loop client counts")
    p.add_argument("--requests", type=int, default=256, help="max requests per level (x concurrency/32, min 32)")
    p.add_argument("--baseline-requests", type=int, default=48, help="max one-at-a-time generate calls")
    p.add_argument("--time-budget", type=float, default=45.0, help="seconds per level at most")
    p.add_argument("--max-new-tokens", type=int, default=20, help="caption length limit, same for both")
    p.add_argument("--max-batch-size", type=int, default=32, help="server batch limit")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="server batch wait")
    p.add_argument("--threads", type=int, default=1, help="torch threads, server and baseline alike")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # from_pretrained lists the retrieval/VQA keys it does not use

    work = Path(tempfile.mkdtemp(prefix="unitrans-bench-"))
    bb_dir = backbone_dir(work)
    adapters, names = adapter_names(bb_dir, work)
    size = BlipConfig.from_pretrained(str(bb_dir)).vision_config.image_size
    images = make_images(64, size)
    print(f"backbone {bb_dir.name}; adapters cycled: {', '.join(names)}; {args.threads} torch thread(s); "
          f"captions of {args.max_new_tokens} tokens; server batch <= {args.max_batch_size}, wait {args.max_wait_ms} ms",
          flush=True)

    base = baseline(bb_dir, images, args.baseline_requests, args.time_budget, args.max_new_tokens)
    print(f"baseline transformers generate, one at a time: {base['n']} calls, {base['rps']:.1f} req/s, "
          f"p50 {base['p50'] * 1000:.0f} ms, p99 {base['p99'] * 1000:.0f} ms", flush=True)

    proc, url = start_server(bb_dir, adapters, work / "data", args)
    rows = []
    try:
        with Client(url) as c:  # same weights: the server's frozen caption equals transformers' (sanity)
            same = c.caption(images[0], adapter="none", max_new_tokens=args.max_new_tokens)["caption"]
        print(f"server 'none' caption == transformers caption for image 0: {same == base['texts'][0].strip()}")
        asyncio.run(load(url, images, names, 4, 8, 30, args.max_new_tokens))  # warm-up
        for conc in args.concurrency:
            n = max(32, args.requests * conc // 32)
            r = asyncio.run(load(url, images, names, conc, n, args.time_budget, args.max_new_tokens))
            rows.append((conc, r))
            print(f"server c={conc:<3} {r['n']:4d} req  {r['rps']:7.1f} req/s  p50 {r['p50'] * 1000:7.0f} ms  "
                  f"p99 {r['p99'] * 1000:7.0f} ms  x{r['rps'] / base['rps']:.1f} baseline", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    print("\n| mode | concurrency | requests | req/s | p50 ms | p99 ms | vs baseline |")
    print("|---|---|---|---|---|---|---|")
    print(f"| transformers generate, one at a time | 1 | {base['n']} | {base['rps']:.1f} | {base['p50'] * 1000:.0f} | "
          f"{base['p99'] * 1000:.0f} | 1.0x |")
    for conc, r in rows:
        print(f"| unitrans server, mixed adapters | {conc} | {r['n']} | {r['rps']:.1f} | {r['p50'] * 1000:.0f} | "
              f"{r['p99'] * 1000:.0f} | {r['rps'] / base['rps']:.1f}x |")


if __name__ == "__main__":
    main(sys.argv[1:])
