"""bench/serve.py's VQA level: questions of mixed token lengths, served by today's
any-length batching and by the old equal-length-only batching, side by side.

    .venv/bin/python bench/serve.py --levels vqa              # VQA only (~2-3 minutes)
    .venv/bin/python bench/serve.py --levels vqa --vqa-concurrency 8 32 --requests 192

Two servers run at once on 127.0.0.1 (`python -m server` and `python -m
bench.old_vqa_server`, which keys VQA batches by question length as the server used
to); each level runs new, old, old, new (ABBA) so both see the same drift in the load
of the shared cores. Same images, questions, adapter and decoding (the server's VQA
defaults: 3 beams, at most 10 tokens) on both; before timing, the two servers must
give the same answers (masked padding: a batch never changes an answer).
"""

from __future__ import annotations

import asyncio
import os
import re

import numpy as np

from bench.closed_loop import closed_loop
from client import AsyncClient, Client

# 4 to 19 tokens on models/blip-shapes' tokenizer: 8 distinct lengths
QUESTIONS = ["what colour is the circle ?", "is there a star ?", "how many squares are there ?",
             "what shape is left of the red circle ?", "is the big blue square above the small green triangle ?",
             "how many red shapes are right of the yellow star ?", "colour ?", "where is the star ?",
             "are there more circles than squares in the picture ?",
             "what is the colour of the shape at the top left ?"]


def load_average() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f} (1, 5, 15 min; {} cores)".format(*os.getloadavg(), os.cpu_count())


def batch_stats(url: str) -> tuple[float, float]:
    """(rows, batches) the vqa batcher has run so far."""
    with Client(url) as c:
        text = c.metrics()
    rows = re.search(r'unitrans_batch_size_sum\{task="vqa"\} (\S+)', text)
    count = re.search(r'unitrans_batch_size_count\{task="vqa"\} (\S+)', text)
    return (float(rows.group(1)), float(count.group(1))) if rows and count else (0.0, 0.0)


async def vqa_load(url: str, images: list[bytes], concurrency: int, n: int, budget: float) -> dict:
    """Closed loop: `concurrency` clients, request i asks QUESTIONS[i % 10] about images[i % len]."""
    async def ask(c, i):
        await c.vqa(images[i % len(images)], QUESTIONS[i % len(QUESTIONS)])

    return await closed_loop(url, concurrency, n, budget, ask)


def same_answers(new_url: str, old_url: str, images: list[bytes]) -> bool:
    async def answers(url):
        async with AsyncClient(url) as c:  # concurrent, so the new server pads and masks
            out = await asyncio.gather(*(c.vqa(images[i], q) for i, q in enumerate(QUESTIONS)))
        return [r["answer"] for r in out]

    return asyncio.run(answers(new_url)) == asyncio.run(answers(old_url))


def run_vqa_levels(start_server, args, images: list[bytes]) -> list[str]:
    """Start both servers, time each concurrency level ABBA; returns the table's lines."""
    new, new_url = start_server("server")
    old, old_url = start_server("bench.old_vqa_server")
    results: dict[tuple[str, int], dict] = {}
    try:
        print(f"VQA: new == old answers on {len(QUESTIONS)} concurrent mixed-length questions: "
              f"{same_answers(new_url, old_url, images)}", flush=True)
        for url in (new_url, old_url):
            asyncio.run(vqa_load(url, images, 4, 8, 30))  # warm-up
        for conc in args.vqa_concurrency:
            n = max(32, args.requests * conc // 32)
            for mode, url in (("new", new_url), ("old", old_url), ("old", old_url), ("new", new_url)):
                rows0, batches0 = batch_stats(url)
                r = asyncio.run(vqa_load(url, images, conc, n // 2, args.time_budget / 2))
                rows1, batches1 = batch_stats(url)
                acc = results.setdefault((mode, conc), {"n": 0, "wall": 0.0, "lat": [], "rows": 0.0, "batches": 0.0,
                                                        "runs": []})
                acc["runs"].append(r["n"] / r["wall"])
                acc["n"] += r["n"]
                acc["wall"] += r["wall"]
                acc["lat"] += r["lat"]
                acc["rows"] += rows1 - rows0
                acc["batches"] += batches1 - batches0
                print(f"  vqa {mode} c={conc:<3} {r['n']:4d} req {r['n'] / r['wall']:7.1f} req/s  ({load_average()})",
                      flush=True)
    finally:
        for proc in (new, old):
            proc.terminate()
            proc.wait(timeout=30)
    # new / old: geometric mean of each mode's run rates; with runs ordered new, old, old, new
    # a load that drifts linearly in time cancels out of it
    lines = ["| batching | concurrency | requests | req/s of its runs | p50 ms | p99 ms | mean batch | new / old |",
             "|---|---|---|---|---|---|---|---|"]
    for conc in args.vqa_concurrency:
        geo = {m: float(np.exp(np.mean(np.log(results[(m, conc)]["runs"])))) for m in ("new", "old")}
        for mode, label in (("old", "equal length only (old)"), ("new", "any length, padded + masked")):
            r = results[(mode, conc)]
            ratio = f"{geo['new'] / geo['old']:.2f}x" if mode == "new" else ""
            lines.append(f"| {label} | {conc} | {r['n']} | {', '.join(f'{x:.1f}' for x in r['runs'])} | "
                         f"{np.percentile(r['lat'], 50) * 1000:.0f} | {np.percentile(r['lat'], 99) * 1000:.0f} | "
                         f"{r['rows'] / max(r['batches'], 1):.1f} | {ratio} |")
    return lines
