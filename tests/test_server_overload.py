"""Overload: a full queue answers 503 with Retry-After, a slow request 504, and the
server keeps serving afterwards."""

from __future__ import annotations

import asyncio

import httpx

from client import AsyncClient, Client, OverloadedError, TimeoutError
from tests.test_server_harness import images, running_server

IMG = images(1, seed=4)[0]


def test_full_queue_gives_503_and_server_recovers():
    with running_server(queue_size=2, max_batch_size=1, max_wait_ms=0, retry_after_s=2) as url:
        async def burst(n):
            async with AsyncClient(url, max_connections=n) as c:
                return await asyncio.gather(*(c.caption(IMG, num_beams=2, max_new_tokens=20) for _ in range(n)),
                                            return_exceptions=True)

        results = asyncio.run(burst(40))
        ok = [r for r in results if isinstance(r, dict)]
        refused = [r for r in results if isinstance(r, OverloadedError)]
        assert len(ok) + len(refused) == len(results), [r for r in results if not isinstance(r, dict)][:3]
        assert ok and refused, (len(ok), len(refused))
        assert all(r.retry_after == 2 and r.type == "overloaded" and "queue is full" in r.message for r in refused)
        # every success is the right answer, not a half-done one
        with Client(url) as c:
            expected = c.caption(IMG, num_beams=2, max_new_tokens=20)
            assert all(r == expected for r in ok)
            assert c.health() == {"status": "ok"}
            metrics = c.metrics()
        assert 'unitrans_rejected_total{reason="queue_full",task="caption"}' in metrics
        raw = httpx.post(url + "/caption", json={"image": "!!"}, timeout=10)  # still validating
        assert raw.status_code == 400


def test_request_timeout_gives_504_and_server_recovers():
    with running_server(request_timeout_s=0.001, max_wait_ms=50) as url:
        with Client(url) as c:
            try:
                c.caption(IMG)
            except TimeoutError as exc:
                assert exc.status == 504 and "did not finish" in exc.message
            else:
                raise AssertionError("expected a 504")
            assert c.health() == {"status": "ok"}
