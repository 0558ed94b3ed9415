"""The benches' one load generator: `concurrency` clients in a closed loop over HTTP.

Each client sends its next unit of work as soon as its last one returned, until `n` units
were started or `budget` seconds passed; latency is per unit (one request, or a group of
requests a unit makes).

A unit that fails (any `client` error: an HTTP error answer, or no answer at all) is
counted in "failed" and the level goes on. It used to end the level: the first error
left `gather`, the shared `AsyncClient` closed under every other client's request in
flight, and each of those failed with `httpx.ReadError` (the "ReadError storm" of one
fan-out run, docs/serving.md). A bug in the bench itself (any other exception) still
raises.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np

from client import AsyncClient, UnitransError


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class RequestsFailed(Exception):
    """Some requests of a unit of several failed (`all_of`); `.failures` holds their client errors.
    (Not an ExceptionGroup: that needs Python 3.11, the project supports 3.10.)"""

    def __init__(self, failures: list[BaseException], total: int):
        super().__init__(f"{len(failures)} of {total} requests failed")
        self.failures = failures


def _failures(exc: BaseException) -> list[BaseException]:
    """The client errors a failed unit raised: one, or each of a RequestsFailed's; a
    failure that is not a client error (a bug of the bench) re-raises."""
    failures = exc.failures if isinstance(exc, RequestsFailed) else [exc]
    for e in failures:
        if not isinstance(e, UnitransError):
            raise e
    return failures


async def all_of(*requests) -> list:
    """Await every request of a unit (each finishes even when another failed, so no request
    outlives its unit); raise RequestsFailed with the failures, if any."""
    out = await asyncio.gather(*requests, return_exceptions=True)
    failed = [r for r in out if isinstance(r, BaseException)]
    if failed:
        raise RequestsFailed(failed, len(out))
    return out


async def closed_loop(url: str, concurrency: int, n: int, budget: float, unit, connections: int | None = None) -> dict:
    """`unit(client, i)` for i in 0..n-1 -> {"n", "failed", "errors", "wall", "rps", "p50", "p99", "lat"}.

    n: units that succeeded (rps, p50 and p99 are theirs, seconds); failed: failed requests
    (a unit of 4 requests where 2 failed counts 2); errors: Counter of "Type: message"."""
    lat: list[float] = []
    errors: Counter = Counter()
    counter = iter(range(n))
    start = time.perf_counter()

    async def worker(c: AsyncClient):
        for i in counter:
            if time.perf_counter() - start > budget:
                return
            t0 = time.perf_counter()
            try:
                await unit(c, i)
            except Exception as exc:  # noqa: BLE001 - _failures re-raises all but client errors
                for e in _failures(exc):
                    errors[f"{type(e).__name__}: {str(e)[:120]}"] += 1
                continue
            lat.append(time.perf_counter() - t0)

    async with AsyncClient(url, timeout=600, max_connections=connections or concurrency) as c:
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return {"n": len(lat), "failed": sum(errors.values()), "errors": errors, "wall": wall, "rps": len(lat) / wall,
            "p50": pct(lat, 50), "p99": pct(lat, 99), "lat": lat}


def report_errors(label: str, r: dict) -> None:
    """Print a level's failures (kinds and counts) so a failed run says why."""
    if r["failed"]:
        kinds = "; ".join(f"{k} x{v}" for k, v in r["errors"].most_common(3))
        print(f"  {label}: {r['failed']} failed request(s): {kinds}", flush=True)
