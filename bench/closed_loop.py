"""The benches' one load generator: `concurrency` clients in a closed loop over HTTP.

Each client sends its next unit of work as soon as its last one returned, until `n` units
were started or `budget` seconds passed; latency is per unit (one request, or a group of
requests a unit makes).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from client import AsyncClient


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def closed_loop(url: str, concurrency: int, n: int, budget: float, unit, connections: int | None = None) -> dict:
    """`unit(client, i)` for i in 0..n-1 -> {"n", "wall", "rps", "p50", "p99", "lat"} (seconds)."""
    lat: list[float] = []
    counter = iter(range(n))
    start = time.perf_counter()

    async def worker(c: AsyncClient):
        for i in counter:
            if time.perf_counter() - start > budget:
                return
            t0 = time.perf_counter()
            await unit(c, i)
            lat.append(time.perf_counter() - t0)

    async with AsyncClient(url, timeout=600, max_connections=connections or concurrency) as c:
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"n": len(lat), "wall": wall, "rps": len(lat) / wall, "p50": pct(lat, 50), "p99": pct(lat, 99), "lat": lat}
