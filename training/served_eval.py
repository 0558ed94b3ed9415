"""Score a running server on a world's held-out split, over HTTP, as a user would.

    python -m server --port 8011 &                                   # the shipped defaults
    python -m training.shapes.world --out /tmp/world-7 --seed 7 --n 2000   # a seed no training used
    python -m training.served_eval --url http://127.0.0.1:8011 --world /tmp/world-7 --split test \
        --json /tmp/served.json

Every prediction is a real request through the public API (`client.AsyncClient`, 16 in
flight so the server batches them), with the task's default adapter and with
`adapter="none"` (the frozen backbone); the scores use training.metrics, the functions
training.evaluate uses:
- VQA: VQAv2 accuracy, overall and per `question_type`, beside the question-only
  baseline (the most frequent answer of each question type in `--prior` — by default
  the world's train split — never looking at the image).
- Captions: exact match (%), BLEU@4 and CIDEr x100 against the canonical references.
- Retrieval: R@1/5/10 both ways, through galleries created on the server (the split's
  images, whose sibling hard negatives are among them, and all their captions);
  rank = the server's order of a top-k (ITC) list re-ranked by ITM, k = --top-k.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from client import AsyncClient
from training.metrics import caption_scores, vqa_accuracy


async def _gather(jobs, limit: int = 16):
    gate = asyncio.Semaphore(limit)

    async def one(job):
        async with gate:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


def question_prior(entries: list[dict]) -> dict[str, str]:
    """question_type -> its most frequent first answer (ties: alphabetical)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for e in entries:
        counts[e.get("question_type", "all")][e["answer"][0]] += 1
    return {t: min(c, key=lambda a: (-c[a], a)) for t, c in counts.items()}


async def eval_vqa(c: AsyncClient, world: Path, entries: list[dict], prior: dict[str, str], adapter) -> dict:
    answers = await _gather(c.vqa(world / e["image"], e["question"], adapter=adapter) for e in entries)
    by_type: dict[str, list[float]] = defaultdict(list)
    base_by_type: dict[str, list[float]] = defaultdict(list)
    for e, a in zip(entries, answers):
        t = e.get("question_type", "all")
        by_type[t].append(vqa_accuracy(a["answer"], e["answer"]))
        base_by_type[t].append(vqa_accuracy(prior.get(t, ""), e["answer"]))
    mean = lambda xs: round(float(100 * np.mean(xs)), 1)  # noqa: E731
    return {"accuracy": mean([x for v in by_type.values() for x in v]), "n_questions": len(entries),
            "by_type": {t: mean(v) for t, v in sorted(by_type.items())},
            "question_only": mean([x for v in base_by_type.values() for x in v]),
            "question_only_by_type": {t: mean(v) for t, v in sorted(base_by_type.items())},
            "empty_answers": sum(not a["answer"].strip() for a in answers),
            "examples": [{"question": e["question"], "answer": a["answer"], "truth": e["answer"][0]}
                         for e, a in list(zip(entries, answers))[:3]]}


async def eval_caption(c: AsyncClient, world: Path, entries: list[dict], adapter) -> dict:
    refs: dict[str, list[str]] = {}
    for e in entries:
        refs.setdefault(e["image"], []).append(e["caption"])
    images = list(refs)
    out = await _gather(c.caption(world / p, adapter=adapter) for p in images)
    hyps = {p: o["caption"] for p, o in zip(images, out)}
    scores = caption_scores(refs, hyps)
    exact = float(np.mean([hyps[p] in refs[p] for p in images]) * 100)
    return {"exact_match": round(exact, 1), "bleu4": round(scores["bleu4"], 1),
            "cider": round(scores["cider"], 1), "n_images": len(images),
            "examples": [{"caption": hyps[p], "truth": refs[p][0]} for p in images[:3]]}


def _recall(ranks: list[int]) -> dict[str, float]:
    r = np.array(ranks)
    return {f"r{k}": round(float(100 * np.mean(r < k)), 1) for k in (1, 5, 10)}


async def eval_retrieval(c: AsyncClient, world: Path, entries: list[dict], adapter, top_k: int) -> dict:
    tag = uuid.uuid4().hex[:8]
    images, texts = f"eval-img-{tag}", f"eval-txt-{tag}"
    text_items = [(f"t{i}-{j}", cap, i) for i, e in enumerate(entries) for j, cap in enumerate(e["caption"])]
    await c.create_gallery(images, "image")
    await c.create_gallery(texts, "text")
    try:
        for start in range(0, len(entries), 64):
            await c.add_items(images, [{"id": f"i{i}", "image": world / e["image"]}
                                       for i, e in enumerate(entries[start:start + 64], start)], adapter=adapter)
        for start in range(0, len(text_items), 256):
            await c.add_items(texts, [{"id": tid, "text": t} for tid, t, _ in text_items[start:start + 256]],
                              adapter=adapter)
        t2i = await _gather(c.retrieve(text=t, gallery=images, top_k=top_k, adapter=adapter) for _, t, _ in text_items)
        i2t = await _gather(c.retrieve(image=world / e["image"], gallery=texts, top_k=top_k, adapter=adapter)
                            for e in entries)
    finally:
        await c.delete_gallery(images)
        await c.delete_gallery(texts)

    def rank(hits: list[dict], good: set[str]) -> int:
        ids = [h["id"] for h in hits]
        return next((r for r, i in enumerate(ids) if i in good), top_k)

    t2i_ranks = [rank(r["results"], {f"i{i}"}) for r, (_, _, i) in zip(t2i, text_items)]
    owner = defaultdict(set)
    for tid, _, i in text_items:
        owner[i].add(tid)
    i2t_ranks = [rank(r["results"], owner[i]) for i, r in enumerate(i2t)]
    t2i_r, i2t_r = _recall(t2i_ranks), _recall(i2t_ranks)
    return {**{f"t2i_{k}": v for k, v in t2i_r.items()}, **{f"i2t_{k}": v for k, v in i2t_r.items()},
            "n_images": len(entries), "n_texts": len(text_items), "top_k": top_k}


async def run(args) -> dict:
    world = Path(args.world)
    load = lambda name: json.loads((world / f"{name}_{args.split}.json").read_text())  # noqa: E731
    prior_entries = json.loads(Path(args.prior).read_text()) if args.prior else \
        json.loads((world / "vqa_train.json").read_text())
    prior = question_prior(prior_entries)
    result: dict = {"world": str(world), "split": args.split, "url": args.url, "prior": prior}
    async with AsyncClient(args.url, timeout=600) as c:
        for name, adapter in (("default", None), ("frozen", "none")):
            r = result.setdefault(name, {})
            if "vqa" in args.tasks:
                r["vqa"] = await eval_vqa(c, world, load("vqa")[: args.questions], prior, adapter)
            if "caption" in args.tasks:
                r["caption"] = await eval_caption(c, world, load("caption")[: 2 * args.images], adapter)
            if "retrieval" in args.tasks:
                r["retrieval"] = await eval_retrieval(c, world, load("retrieval")[: args.images], adapter, args.top_k)
            print(json.dumps({name: r}), flush=True)
    return result


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.served_eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running server")
    p.add_argument("--world", required=True, help="a world directory (python -m training.shapes.world --out)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split to score")
    p.add_argument("--tasks", nargs="+", default=["vqa", "caption", "retrieval"], help="tasks to score")
    p.add_argument("--questions", type=int, default=600, help="VQA questions (the first N of the split)")
    p.add_argument("--images", type=int, default=200, help="caption and retrieval images (the first N)")
    p.add_argument("--top-k", type=int, default=16, help="retrieval: ITC candidates re-ranked by ITM per query")
    p.add_argument("--prior", default=None, help="VQA JSON whose answers make the question-only baseline "
                                                 "(default: <world>/vqa_train.json)")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
