"""Serve unitrans over HTTP.

    python -m server                                   # shipped default backbone + adapters, 127.0.0.1:8000
    python -m server --backbone ~/blip-image-captioning-base --backbone ~/blip-vqa-base \
                     --backbone ~/blip-itm-base-coco --adapters ./my-adapters --host 0.0.0.0
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
    p = argparse.ArgumentParser(prog="python -m server", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", action="append", metavar="DIR",
                   help="backbone directory; repeat to combine parts (default: models/blip-shapes)")
    p.add_argument("--adapters", metavar="DIR", help="adapter directory (default: models/adapters)")
    p.add_argument("--data", metavar="DIR", help="local state; galleries default to <data>/lancedb (default: ./data of the repo)")
    p.add_argument("--galleries", metavar="URI", help="LanceDB gallery store shared by replicas: a directory, "
                   "s3://, gs:// or az:// URI (default: <data>/lancedb)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="weights and activations dtype")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--max-batch-size", type=int, help="rows per batched model call")
    p.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill")
    p.add_argument("--queue-size", type=int, help="waiting requests per task before 503")
    p.add_argument("--log-level", help="uvicorn and server log level (default info)")
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
    import uvicorn

    from server.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                workers=1, timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
