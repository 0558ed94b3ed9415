"""Serve unitrans over HTTP.

    python -m server                                   # shipped default backbone + adapters, 127.0.0.1:8000
    python -m server --port 8080 --adapters ./my-adapters --adapters /shared/adapters   # + models/adapters
    python -m server --backbone ~/blip-image-captioning-base --backbone ~/blip-vqa-base \
                     --backbone ~/blip-itm-base-coco --adapters ./blip-base-adapters --no-shipped-adapters
    UNITRANS_API_KEY=secret python -m server           # every setting also reads UNITRANS_<NAME>

Flags override environment variables; see server/settings.py for every setting.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on shared cores spinning threads made
# model calls 10x slower here. Set before torch loads; an explicit environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pydantic import ValidationError

from server.settings import DEFAULT_BACKBONE, Settings, missing_default_message


def parse(argv: list[str]) -> dict:
    d = Settings.model_fields  # defaults shown in --help are the settings' own

    def default(name: str) -> str:
        return f"(default: {d[name].default}; env UNITRANS_{name.upper()})"

    p = argparse.ArgumentParser(prog="python -m server", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", action="append", metavar="DIR",
                   help="backbone directory; repeat to combine parts (default: models/blip-shapes; "
                        "env UNITRANS_BACKBONE, a JSON list)")
    p.add_argument("--adapters", action="append", metavar="DIR",
                   help="adapter directory, served beside the shipped models/adapters; repeatable; a name in two "
                        "directories stops the start (default: none; env UNITRANS_ADAPTERS, a JSON list)")
    p.add_argument("--no-shipped-adapters", dest="shipped_adapters", action="store_const", const=False,
                   help="do not serve models/adapters (e.g. beside a real BLIP) (env UNITRANS_SHIPPED_ADAPTERS=false)")
    p.add_argument("--data", metavar="DIR", help=f"local state; galleries default to <data>/lancedb {default('data')}")
    p.add_argument("--galleries", metavar="URI", help="LanceDB gallery store shared by replicas: a directory, "
                   "s3://, gs:// or az:// URI (default: <data>/lancedb; env UNITRANS_GALLERIES)")
    p.add_argument("--host", help=f"bind address {default('host')}")
    p.add_argument("--port", type=int, help=f"port {default('port')}")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help=f"weights and activations dtype {default('dtype')}")
    p.add_argument("--device", help=f"cpu, cuda or cuda:N {default('device')}")
    p.add_argument("--max-batch-size", type=int, help=f"rows per batched model call {default('max_batch_size')}")
    p.add_argument("--max-wait-ms", type=float, help=f"how long a batch waits to fill {default('max_wait_ms')}")
    p.add_argument("--caption-scheduler", choices=["batch", "continuous"],
                   help="greedy captions: batch = a batch decodes to its end together; continuous = requests "
                        f"join and leave a running decode per token (beams and VQA: batch) {default('caption_scheduler')}")
    p.add_argument("--queue-size", type=int, help=f"waiting requests per task before 503 {default('queue_size')}")
    p.add_argument("--log-level", help=f"uvicorn and server log level {default('log_level')}")
    p.add_argument("--image-cache-mb", type=float,
                   help=f"image-feature cache size, 0 = off {default('image_cache_mb')}")
    p.add_argument("--decode-workers", type=int,
                   help=f"processes decoding images, 0 = the thread pool {default('decode_workers')}")
    p.add_argument("--max-fanout", type=int, help=f"adapters per fan-out request {default('max_fanout')}")
    args = vars(p.parse_args(argv))
    return {k: v for k, v in args.items() if v is not None}


def main(argv: list[str]) -> int:
    overrides = parse(argv)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if not settings.backbone and not (DEFAULT_BACKBONE / "config.json").is_file():
        print(f"error: {missing_default_message(DEFAULT_BACKBONE)}", file=sys.stderr)
        return 2
    missing = [str(d) for d in settings.backbone if not d.is_dir()]
    if missing:
        print(f"error: backbone directory not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    missing = [str(d) for d in settings.adapters if not d.expanduser().is_dir()]
    if missing:
        print(f"error: adapter directory not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    from server.registry import AdapterDirError, find_adapter_files

    try:
        find_adapter_files(settings.adapter_dirs())
    except AdapterDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from server.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                workers=1, timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
