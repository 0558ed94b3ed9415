"""Serving throughput and latency, side by side for each model size in one run: the unitrans
server (dynamic batching, mixed per-request adapters) against the model alone (the ceiling)
and against one-at-a-time transformers `BlipForConditionalGeneration.generate` on the same
weights, plus fan-out and the image-feature cache; one combined markdown table at the end.

    .venv/bin/python bench/serve.py                       # shipped model, every level; ~5 minutes
    .venv/bin/python bench/serve.py --sizes small base --levels caption ceiling fanout cache \
        --concurrency 1 8 32                              # issue 13's table; ~30-45 minutes, base most of it
    .venv/bin/python bench/serve.py --levels caption --requests 64 --time-budget 30
    .venv/bin/python bench/serve.py --sizes small base --requests 256 32 --time-budget 45 120
    .venv/bin/python bench/serve.py --levels vqa         # VQA only: any-length vs equal-length batching
    .venv/bin/python bench/serve.py --levels caption --caption-schedulers batch continuous   # side by side

Sizes: small is models/blip-shapes (else a random model of its size); base is a random
BLIP at BlipConfig() defaults (ViT-B/16 at 384 px, BERT-base text, 224M parameters;
bench/backbone.py), ~100x slower per caption. So --requests, --baseline-requests and
--time-budget take one value per size, in --sizes order (one value: every size); left
out, each size gets its own default (DEFAULTS below: small 256 / 64 / 45 s, base 48 / 12
/ 240 s).

Levels, each size in turn (server subprocesses on free 127.0.0.1 ports, one per level):
- caption: the server at each --concurrency, closed-loop clients (each sends its next
  request when its last answer arrives), requests cycling through the caption adapters
  (models/adapters' when they fit, else VCRA and LoRA adapters made here with random
  non-zero vectors, plus "none"); one-at-a-time `generate` interleaved (bench/serve_caption.py);
  with --caption-schedulers batch continuous, a server per caption scheduler, alternating.
- ceiling: the model alone, batches of --max-batch-size, no HTTP; the server rows' ratio
  to it (the server rows run once, in the caption level when it runs).
- fanout, cache: 4 adapters on one image in one request vs 4 requests, and 5 questions on
  one image with vs without the image cache, at the largest --concurrency (bench/serve_ceiling.py).
- vqa: any-length vs equal-length VQA batching (bench/serve_vqa.py; its own table per size).
A level stops after its requests or its time budget. Failed requests (error answers, or
none) are counted per row ("failed"), never end the run.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
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
from transformers import BlipConfig  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from adapters import create_adapter, save_adapter  # noqa: E402
from adapters.backbone import Backbone  # noqa: E402
from bench import serve_caption, serve_ceiling, serve_table, serve_vqa  # noqa: E402
from client import local  # noqa: E402

SHIPPED = ROOT / "models" / "blip-shapes"
SHIPPED_ADAPTERS = ROOT / "models" / "adapters"
WORDS = ["a picture of", "a red circle left of a blue square", "two green triangles", "one yellow star",
         "what colour is the circle ?", "yes", "no", "above", "below"]


def base_dir(work: Path) -> Path:
    """A random BLIP at BlipConfig() defaults (ViT-B/16 384 px, BERT-base), saved under `work`."""
    from bench.backbone import base_backbone

    torch.manual_seed(0)
    return base_backbone().save_pretrained(work / "blip-base-random")


def small_dir(work: Path) -> Path:
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


BACKBONES = {"small": small_dir, "base": base_dir}  # size -> (work dir -> backbone dir)
# per-size knobs: BLIP-base is ~100x slower per caption (~2 s on one core), so fewer requests, longer budget
DEFAULTS = {"small": {"requests": 256, "baseline_requests": 64, "time_budget": 45.0},
            "base": {"requests": 48, "baseline_requests": 12, "time_budget": 240.0}}


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



# -- server -------------------------------------------------------------------------------
def start_server(bb_dir: Path, adapters: Path, data: Path, args, module: str = "server",
                 scheduler: str | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m <module>` (the server, or bench.old_vqa_server) on a free loopback port, once ready;
    `scheduler`: its --caption-scheduler (None: the server's default)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNITRANS_TORCH_THREADS": str(args.threads),
           "UNITRANS_QUEUE_SIZE": "1024", "UNITRANS_DEFAULT_CAPTION_ADAPTER": "none",
           # a BLIP-base batch can take minutes, and a level's last requests wait for those started before
           # the budget ran out: a 504 here would be the bench's doing, not the server's
           "UNITRANS_REQUEST_TIMEOUT_S": str(max(60.0, 3 * args.time_budget))}
    return local.start(["--backbone", str(bb_dir), "--adapters", str(adapters), "--data", str(data),
                        "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
                        "--log-level", "warning"] + (["--caption-scheduler", scheduler] if scheduler else []),
                       module=module, env=env, cwd=ROOT)


def per_size(p: argparse.ArgumentParser, values: list | None, sizes: list[str], key: str) -> dict:
    """A per-size knob: one value per size in --sizes order, one value for all, or DEFAULTS."""
    if values is None:
        return {s: DEFAULTS[s][key] for s in sizes}
    if len(values) == 1:
        return dict.fromkeys(sizes, values[0])
    if len(values) != len(sizes):
        p.error(f"--{key.replace('_', '-')}: one value, or one per size ({len(sizes)}), not {len(values)}")
    return dict(zip(sizes, values))


def run_size(bb_dir: Path, work: Path, args) -> dict:
    """Every level of `args.levels` on one backbone; the results bench/serve_table.py reads."""
    adapters, names = adapter_names(bb_dir, work)
    images = make_images(64, BlipConfig.from_pretrained(str(bb_dir)).vision_config.image_size)
    out: dict = {}

    def server(adapter_dir: Path = adapters, module: str = "server", scheduler: str | None = None):
        return start_server(bb_dir, adapter_dir, work / f"data-{time.time_ns()}", args, module, scheduler)

    print(f"  caption adapters cycled: {', '.join(names)}; at most {args.max_new_tokens} tokens", flush=True)
    if "ceiling" in args.levels:
        out["ceiling"] = r = serve_ceiling.ceiling(bb_dir, adapters, names, images, args)
        print(f"  ceiling: {r['n']} rows, {r['rps']:.2f} rows/s", flush=True)
    if {"caption", "ceiling"} & set(args.levels):
        with serve_ceiling.env("UNITRANS_IMAGE_CACHE_MB", "0"):  # every request pays its vision pass, as the ceiling
            out.update(serve_caption.server_levels(server, bb_dir, names, images, args,
                                                   generate="caption" in args.levels))
    if "fanout" in args.levels:
        fan_dir = work / "fan-adapters"
        fan_names = serve_ceiling.fanout_adapters(bb_dir, fan_dir)
        with serve_ceiling.env("UNITRANS_IMAGE_CACHE_MB", "0"):  # what fan-out shares, not what the cache does
            proc, url = server(fan_dir)
        try:
            out["fanout"] = serve_ceiling.fanout_rows(url, fan_names, images, args, max(args.concurrency))
        finally:
            local.stop(proc)
    if "cache" in args.levels:
        out["cache"] = serve_ceiling.cache_rows(server, images, args, max(args.concurrency))
    if "vqa" in args.levels:
        print(f"  VQA: questions of {len(serve_vqa.QUESTIONS)} phrasings, mixed token lengths; the adapters "
              f"directory's 'vqa' adapter if it fits, else the frozen backbone", flush=True)
        out["vqa"] = serve_vqa.run_vqa_levels(lambda module: server(module=module), args, images)
    return out


def main(argv: list[str], backbones: dict | None = None) -> dict[str, dict]:
    """Runs the levels for each of --sizes and prints the combined table; returns {size: results}.
    `backbones` maps a size to (work dir -> backbone dir); tests hand in tiny ones."""
    backbones = backbones or BACKBONES
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Per-size knobs take one value per size in --sizes order, or one for all; "
                                       "defaults: " + "; ".join(f"{s}: {d}" for s, d in DEFAULTS.items()))
    p.add_argument("--sizes", nargs="+", choices=list(BACKBONES), default=["small"],
                   help="models to run, each in turn, one column group each in the table: small = the shipped "
                        "model; base = a random BLIP-base-size model (slow: ~2 s per caption on one core)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32],
                   help="closed-loop client counts of the server rows; fan-out and cache run at the largest")
    p.add_argument("--requests", type=int, nargs="+",
                   help="per size: max requests per level (server rows: x concurrency/32, min 32; fan-out: units "
                        "of 4 captions; cache: /5 units of 5 questions; ceiling: /batch batches, min 2)")
    p.add_argument("--baseline-requests", type=int, nargs="+",
                   help="per size: one-at-a-time generate calls, in segments run before, between and after the "
                        "server rows")
    p.add_argument("--time-budget", type=float, nargs="+",
                   help="per size: seconds per level at most (requests in flight then still finish)")
    p.add_argument("--max-new-tokens", type=int, default=20, help="caption length limit, same for all")
    p.add_argument("--caption-schedulers", nargs="+", choices=["batch", "continuous"], default=["batch"],
                   help="caption level: one server per scheduler, run side by side (alternating at each "
                        "concurrency, so both see the same load); the first is the 'server' rows' and the "
                        "others get a ratio row against it")
    p.add_argument("--max-batch-size", type=int, default=32, help="server batch limit, and the ceiling's batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="server batch wait (the server default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, server, ceiling and baseline alike")
    p.add_argument("--levels", nargs="+", choices=["caption", "vqa", "ceiling", "fanout", "cache"],
                   default=["caption", "vqa", "ceiling", "fanout", "cache"],
                   help="caption: server vs transformers generate; vqa: any-length vs equal-length batching; "
                        "ceiling / fanout / cache: bench/serve_ceiling.py")
    p.add_argument("--vqa-concurrency", type=int, nargs="+", default=[8, 32], help="closed-loop clients, VQA level")
    args = p.parse_args(argv)
    if len(set(args.sizes)) != len(args.sizes):
        p.error("--sizes: name each size once")
    knobs = {k: per_size(p, getattr(args, k), args.sizes, k) for k in ("requests", "baseline_requests", "time_budget")}
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # from_pretrained lists the retrieval/VQA keys it does not use

    print(f"{args.threads} torch thread(s); server batch <= {args.max_batch_size}, wait {args.max_wait_ms} ms; "
          f"levels {' '.join(args.levels)}; {serve_vqa.load_average()}", flush=True)
    results, loads = {}, {}
    for size in args.sizes:
        size_args = argparse.Namespace(**{**vars(args), **{k: v[size] for k, v in knobs.items()}})
        work = Path(tempfile.mkdtemp(prefix=f"unitrans-bench-{size}-"))
        bb_dir = backbones[size](work)
        loads[size] = [serve_vqa.load_average()]
        print(f"\n== {size}: backbone {bb_dir.name}; per level at most {size_args.requests} requests, "
              f"{size_args.time_budget:g} s; {loads[size][0]}", flush=True)
        try:
            results[size] = run_size(bb_dir, work, size_args)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # BLIP-base's random weights alone are ~0.9 GB
        loads[size].append(serve_vqa.load_average())

    table = serve_table.combined(results, args.levels, args.concurrency, args.max_batch_size,
                                 args.caption_schedulers)
    if table.count("\n") > 1:
        print("\n" + table)
    for size in args.sizes:
        if "vqa" in results[size]:
            print(f"\nVQA, {size}:\n" + "\n".join(results[size]["vqa"]))
    print("\n" + "\n".join(f"{size}: {a} at its start, {b} at its end" for size, (a, b) in loads.items()), flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
