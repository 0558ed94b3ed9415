"""Command line for a unitrans server.

    python -m client caption cat.png [--adapter NAME] [--beams 3]
    python -m client caption cat.png --adapters caption caption-b none      # one result per adapter
    python -m client vqa cat.png "what colour is the circle?" [--beams 1] [--max-new-tokens 5]
    python -m client vqa cat.png "what colour is the circle?" --candidates red blue
    python -m client vqa clip.mp4 "what colour is the circle?" --video --num-frames 8
    python -m client retrieve --text "a red circle" --gallery shapes [--top-k 5]
    python -m client retrieve --image cat.png --texts "a cat" "a dog"
    python -m client gallery create shapes | add shapes a.png b.png | list | delete shapes
    python -m client adapters [--load NAME | --unload NAME]
    python -m client health

--url (or UNITRANS_URL, default http://127.0.0.1:8000) and --api-key (or
UNITRANS_API_KEY) pick the server. Prints JSON; exit status 1 on an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from client.api import Client
from client.errors import UnitransError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m client", description="Call a unitrans server.")
    p.add_argument("--url", default=os.environ.get("UNITRANS_URL", "http://127.0.0.1:8000"), help="server URL")
    p.add_argument("--api-key", default=os.environ.get("UNITRANS_API_KEY"), help="Bearer API key, if set")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("caption", help="caption an image")
    c.add_argument("image", help="image file")
    c.add_argument("--adapter", help="adapter name ('none' = frozen backbone)")
    c.add_argument("--adapters", nargs="+", metavar="NAME", help="fan-out: one caption per adapter")
    c.add_argument("--beams", type=int, help="beam count (1 = greedy)")
    c.add_argument("--max-new-tokens", type=int, help="caption length limit in tokens")

    v = sub.add_parser("vqa", help="answer a question about an image")
    v.add_argument("image", help="image file (with --video: a video file, MP4/WebM/GIF)")
    v.add_argument("question", help="the question")
    v.add_argument("--video", action="store_true", help="the file is a video, sampled to --num-frames frames")
    v.add_argument("--num-frames", type=int, help="video frames sampled (server default 8)")
    v.add_argument("--adapter", help="adapter name")
    v.add_argument("--adapters", nargs="+", metavar="NAME", help="fan-out: one answer per adapter")
    v.add_argument("--candidates", nargs="+", help="rank these answers instead of generating")
    v.add_argument("--beams", type=int, help="beam count (server default 3; 1 = greedy)")
    v.add_argument("--max-new-tokens", type=int, help="answer length limit in tokens (server default 10)")

    r = sub.add_parser("retrieve", help="text->image or image->text retrieval")
    q = r.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="text query (searches images)")
    q.add_argument("--image", help="image query file (searches texts)")
    q.add_argument("--video", help="video query file (searches texts)")
    r.add_argument("--gallery", help="gallery to search")
    r.add_argument("--images", nargs="+", help="inline image files to search (ids = file names)")
    r.add_argument("--videos", nargs="+", help="inline video files to search (ids = file names)")
    r.add_argument("--num-frames", type=int, help="video frames sampled (server default 8)")
    r.add_argument("--texts", nargs="+", help="inline texts to search (ids = t0, t1, ...)")
    r.add_argument("--top-k", type=int, default=5, help="results to return")
    r.add_argument("--adapter", help="adapter name")
    r.add_argument("--adapters", nargs="+", metavar="NAME", help="fan-out: one result list per adapter")
    r.add_argument("--no-rerank", action="store_true", help="ITC only, no ITM re-rank")

    g = sub.add_parser("gallery", help="manage galleries")
    gs = g.add_subparsers(dest="action", required=True)
    gc = gs.add_parser("create", help="create a gallery")
    gc.add_argument("name", help="gallery name")
    gc.add_argument("--kind", choices=["image", "text", "video"], default="image", help="what it holds")
    ga = gs.add_parser("add", help="add image files (ids = file names) or --texts")
    ga.add_argument("name", help="gallery name")
    ga.add_argument("files", nargs="*", help="image files (video files for a video gallery, with --videos)")
    ga.add_argument("--videos", action="store_true", help="the files are videos")
    ga.add_argument("--texts", nargs="+", help="texts (ids = t0, t1, ... unless given as id=text)")
    gs.add_parser("list", help="list galleries")
    gd = gs.add_parser("delete", help="delete a gallery")
    gd.add_argument("name", help="gallery name")

    a = sub.add_parser("adapters", help="list adapters, or load / unload one")
    a.add_argument("--load", metavar="NAME", help="load <adapter dir>/NAME.safetensors")
    a.add_argument("--pin", action="store_true", help="with --load: never evict it")
    a.add_argument("--unload", metavar="NAME", help="unload an adapter")

    sub.add_parser("health", help="liveness and readiness")
    return p


def _texts(values: list[str]) -> dict[str, str]:
    out = {}
    for i, value in enumerate(values):
        key, sep, text = value.partition("=")
        out.update({key: text} if sep and key and " " not in key else {f"t{i}": value})
    return out


def run(args, c: Client):
    if args.command == "caption":
        return c.caption(args.image, adapter=args.adapter, adapters=args.adapters, num_beams=args.beams,
                         max_new_tokens=args.max_new_tokens)
    if args.command == "vqa":
        media = {"image": None, "video": args.image} if args.video else {"image": args.image}
        return c.vqa(question=args.question, **media, num_frames=args.num_frames, adapter=args.adapter,
                     adapters=args.adapters, candidates=args.candidates, num_beams=args.beams,
                     max_new_tokens=args.max_new_tokens)
    if args.command == "retrieve":
        images = {Path(f).name: f for f in args.images} if args.images else None
        videos = {Path(f).name: f for f in args.videos} if args.videos else None
        return c.retrieve(text=args.text, image=args.image, video=args.video, videos=videos,
                          num_frames=args.num_frames, gallery=args.gallery, images=images,
                          texts=_texts(args.texts) if args.texts else None, top_k=args.top_k,
                          adapter=args.adapter, adapters=args.adapters, rerank=not args.no_rerank)
    if args.command == "gallery":
        if args.action == "create":
            return c.create_gallery(args.name, args.kind)
        if args.action == "add":
            items = [{"id": Path(f).name, "video" if args.videos else "image": f} for f in args.files]
            items += [{"id": k, "text": v} for k, v in _texts(args.texts or []).items()]
            return c.add_items(args.name, items)
        if args.action == "list":
            return c.galleries()
        return c.delete_gallery(args.name)
    if args.command == "adapters":
        if args.load:
            return c.load_adapter(args.load, pin=True if args.pin else None)
        if args.unload:
            return c.unload_adapter(args.unload)
        return c.adapters()
    return {"health": c.health(), "ready": c.ready()}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        with Client(args.url, api_key=args.api_key, timeout=args.timeout) as c:
            result = run(args, c)
    except UnitransError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
