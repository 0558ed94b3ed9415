"""Evaluate a backbone directory on a shapes world: captions and ITC retrieval.

    python -m training.pretrain_eval --backbone models/blip-shapes --world /tmp/shapes-world \
        --split test --sheet models/blip-shapes/contact_sheet.png

Pretraining-style (what the backbone was trained for, `pretrain_<split>.json`):
- caption: greedy captions after the prompt "a picture of " (adapters.tasks.caption,
  what the server runs) scored with BLEU@4 / CIDEr (training.metrics: pycocoevalcap
  scorers on whitespace tokens) and exact match against the one reference.
- ITC R@1 both directions over the split's images and its distinct captions. Many
  images share a caption ("a red circle and a blue square"), so a retrieved item
  counts as correct when its caption is the query's caption (for image->text the
  one true text; for text->image any image bearing that caption).
Downstream (`caption_<split>.json`, `retrieval_<split>.json`), the baseline adapters
start from: BLEU@4/CIDEr of the same greedy captions against the relation-and-count
references, and ITC R@1 over the downstream gallery (sibling hard negatives included).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from adapters import tasks
from adapters.backbone import Backbone
from training.metrics import caption_scores


def top1_recall(scores: np.ndarray, truth: list[set[int]]) -> float:
    """% of query rows whose highest-scoring column is one of its true columns."""
    best = scores.argmax(axis=1)
    return float(100.0 * np.mean([int(b) in t for b, t in zip(best, truth)]))


@torch.inference_mode()
def _encode(bb: Backbone, world: Path, paths: list[str], batch_size: int, captions: bool):
    """Image ITC features (N, D) and, if asked, greedy captions, in batches."""
    feats, caps = [], []
    for start in range(0, len(paths), batch_size):
        pv = tasks.pixels(bb, [Image.open(world / p) for p in paths[start:start + batch_size]])
        feats.append(tasks.itc_image(bb, pv))
        if captions:
            caps += tasks.caption(bb, pv)
    return torch.cat(feats).float().numpy(), caps


@torch.inference_mode()
def _text_feats(bb: Backbone, texts: list[str], batch_size: int) -> np.ndarray:
    out = [tasks.itc_text(bb, *tasks.tokens(bb, texts[s:s + batch_size])) for s in range(0, len(texts), batch_size)]
    return torch.cat(out).float().numpy()


def itc_recall(image_feats: np.ndarray, image_texts: list[set[str]], text_feats: np.ndarray, texts: list[str]
               ) -> dict[str, float]:
    """R@1 (%) both ways; image i matches text j when texts[j] is in image_texts[i]."""
    sim = image_feats @ text_feats.T  # (N_img, N_txt) cosine
    index = {t: j for j, t in enumerate(texts)}
    i2t = [{index[t] for t in ts} for ts in image_texts]
    t2i = [set() for _ in texts]
    for i, ts in enumerate(image_texts):
        for t in ts:
            t2i[index[t]].add(i)
    return {"i2t_r1": top1_recall(sim, i2t), "t2i_r1": top1_recall(sim.T, t2i)}


def evaluate(backbone: str | Path, world: str | Path, split: str = "test", *, sheet: str | Path | None = None,
             limit: int | None = None, batch_size: int = 64) -> dict:
    world = Path(world)
    bb = Backbone.from_dirs(backbone)
    pre = json.loads((world / f"pretrain_{split}.json").read_text())[:limit]
    feats, hyps = _encode(bb, world, [e["image"] for e in pre], batch_size, captions=True)
    refs = {e["image_id"]: [e["caption"]] for e in pre}
    ids = [e["image_id"] for e in pre]
    texts = sorted({e["caption"] for e in pre})
    result = {"split": split, "images": len(pre)}
    result["pretrain"] = {
        **caption_scores(refs, dict(zip(ids, hyps))),
        "exact_match": float(100.0 * np.mean([h == e["caption"] for h, e in zip(hyps, pre)])),
        **itc_recall(feats, [{e["caption"]} for e in pre], _text_feats(bb, texts, batch_size), texts),
    }

    down = json.loads((world / f"retrieval_{split}.json").read_text())[:limit]
    dfeats, dhyps = _encode(bb, world, [e["image"] for e in down], batch_size, captions=True)
    dtexts = sorted({c for e in down for c in e["caption"]})
    result["downstream"] = {
        **caption_scores({e["image_id"]: e["caption"] for e in down}, {e["image_id"]: h for e, h in zip(down, dhyps)}),
        **itc_recall(dfeats, [set(e["caption"]) for e in down], _text_feats(bb, dtexts, batch_size), dtexts),
    }
    if sheet:
        contact_sheet(world, pre[:16], hyps[:16], Path(sheet))
    return result


def contact_sheet(world: Path, entries: list[dict], hyps: list[str], out: Path, scale: int = 3, cols: int = 4) -> None:
    """Grid of images (upscaled `scale`x, nearest) with the generated caption under
    each; a reference that differs is shown below it in red."""
    first = Image.open(world / entries[0]["image"])
    side = first.width * scale
    cell_w, text_h = max(side, 256), 56
    rows = (len(entries) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * (side + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for k, (entry, hyp) in enumerate(zip(entries, hyps)):
        x, y = (k % cols) * cell_w, (k // cols) * (side + text_h)
        image = Image.open(world / entry["image"]).convert("RGB")
        sheet.paste(image.resize((side, side), Image.Resampling.NEAREST), (x + (cell_w - side) // 2, y))
        lines = textwrap.wrap(hyp, 34)[:2]
        wrong = hyp != entry["caption"]
        if wrong:  # the full generated caption, then the reference on a third line
            lines.append("ref: " + entry["caption"])
        for n, line in enumerate(lines):
            colour = "firebrick" if wrong and n == len(lines) - 1 else "black"
            draw.text((x + 4, y + side + 3 + 16 * n), line, fill=colour, font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG", optimize=True)


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.pretrain_eval", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", required=True, help="backbone directory (e.g. models/blip-shapes)")
    p.add_argument("--world", required=True, help="world directory written by python -m training.world")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split to score")
    p.add_argument("--sheet", default=None, help="write a contact-sheet PNG of 16 images with generated captions")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of each file")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = evaluate(args.backbone, args.world, args.split, sheet=args.sheet, limit=args.limit,
                      batch_size=args.batch_size)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
