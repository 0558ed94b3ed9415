"""Gallery store at scale: add throughput, exact and IVF-PQ query p50/p99, recall@10 of indexed
against exact search, disk bytes per item, for synthetic ITC vectors at the shipped width.

    nice -n 10 .venv/bin/python -m bench.galleries                      # 10k, 100k, 1M
    .venv/bin/python -m bench.galleries --sizes 2000 --queries 10       # a quick run

Vectors: unit rows drawn around 1,000 random centres (clustered, as real embeddings are),
items are short texts with a small metadata object; queries are fresh noisy draws.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from server.galleries import GalleryStore, space_columns

COLS = space_columns("bench", "v", "fp")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def run(n: int, dim: int, queries: int, batch: int, root: Path) -> dict:
    rng = np.random.default_rng(n)
    centres = rng.normal(size=(1000, dim))
    store = GalleryStore(root / f"db{n}", index_threshold=10**12)
    tbl = store.create("g", "text")
    started = time.perf_counter()
    for a in range(0, n, batch):
        m = min(batch, n - a)
        vecs = unit(centres[rng.integers(0, 1000, m)] + 0.5 * rng.normal(size=(m, dim)))
        rows = [{"id": f"i{i}", "key": f"k{i}", "text": f"item {i}", "metadata": {"shard": i % 10}}
                for i in range(a, a + m)]
        store.add(tbl, rows, COLS, vecs)
    add_s = time.perf_counter() - started
    qs = unit(centres[rng.integers(0, 1000, queries)] + 0.5 * rng.normal(size=(queries, dim)))

    def timed(exact: bool):
        out, times = [], []
        for qv in qs:
            t = time.perf_counter()
            out.append([r["id"] for r, _ in store.search(tbl, COLS, qv, 10, exact=exact)])
            times.append(time.perf_counter() - t)
        return out, np.array(times) * 1000

    exact, t_exact = timed(True)
    started = time.perf_counter()
    tbl.optimize()  # compact the adds' fragments before indexing
    store.build_index(tbl, COLS[1])
    index_s = time.perf_counter() - started
    approx, t_ivf = timed(False)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx)])
    disk = sum(p.stat().st_size for p in (root / f"db{n}").rglob("*") if p.is_file())
    return {"n": n, "add_per_s": n / add_s, "exact_p50": np.percentile(t_exact, 50), "exact_p99": np.percentile(t_exact, 99),
            "index_s": index_s, "ivf_p50": np.percentile(t_ivf, 50), "ivf_p99": np.percentile(t_ivf, 99),
            "recall10": recall, "bytes_per_item": disk / n}


def main(argv: list[str]) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m bench.galleries", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="gallery sizes")
    p.add_argument("--dim", type=int, default=128, help="vector width (the shipped blip-shapes ITC width is 128)")
    p.add_argument("--queries", type=int, default=100, help="queries timed per size and mode")
    p.add_argument("--batch", type=int, default=10_000, help="items per add (one commit each)")
    args = p.parse_args(argv)
    print("| items | add items/s | exact p50 ms | exact p99 ms | index build s | IVF-PQ p50 ms | IVF-PQ p99 ms "
          "| recall@10 | disk bytes/item |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="unitrans-bench-") as tmp:
        for n in args.sizes:
            r = run(n, args.dim, args.queries, args.batch, Path(tmp))
            results.append(r)
            print(f"| {n:,} | {r['add_per_s']:,.0f} | {r['exact_p50']:.1f} | {r['exact_p99']:.1f} | {r['index_s']:.1f} "
                  f"| {r['ivf_p50']:.1f} | {r['ivf_p99']:.1f} | {r['recall10']:.3f} | {r['bytes_per_item']:,.0f} |",
                  flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
