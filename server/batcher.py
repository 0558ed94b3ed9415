"""The dynamic batcher: requests of one task wait at most `max_wait_ms` for others,
then run as ONE call on the single model worker thread.

    batcher = Batcher("caption", run_batch, executor, settings, metrics)
    result = await batcher.submit(item, key=(num_beams, max_new_tokens), rows=1)

`run_batch(items) -> list[result | Exception]` runs on the model worker (a
one-thread executor shared by every task, so the adapter table and the model are
only ever touched from that thread) and returns one entry per item, an exception
for items that failed alone. Only items with equal `key` share a call (e.g. equal
beam counts). A batch holds at most `max_batch_size` rows, or one item if that
item alone is larger. The waiting queue is bounded: when full, `submit` raises
`Overloaded` (503, Retry-After). An item whose request timed out before its batch
started is dropped from the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from server.errors import Overloaded, Timeout
from server.metrics import Metrics

log = logging.getLogger("unitrans.batcher")


@dataclass
class Item:
    payload: Any
    key: Hashable
    rows: int
    future: asyncio.Future
    adapter: str = "none"
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, task: str, run_batch: Callable[[list[Any]], list[Any]], executor: Executor, *,
                 max_batch_size: int, max_wait_ms: float, queue_size: int, timeout_s: float, retry_after_s: int,
                 metrics: Metrics):
        self.task = task
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self._queue: deque[Item] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False

    # -- request side -------------------------------------------------------------------
    async def submit(self, payload: Any, *, key: Hashable = None, rows: int = 1, adapter: str = "none") -> Any:
        if self._closed:
            raise Overloaded("the server is shutting down", headers={"Retry-After": str(self.retry_after_s)})
        if len(self._queue) >= self.queue_size:
            self.metrics.rejected.labels(self.task, "queue_full").inc()
            raise Overloaded(f"the {self.task} queue is full ({self.queue_size} waiting); retry shortly",
                             headers={"Retry-After": str(self.retry_after_s)})
        item = Item(payload, key, rows, asyncio.get_running_loop().create_future(), adapter)
        self._queue.append(item)
        self.metrics.queue_depth.labels(self.task).set(len(self._queue))
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), self.timeout_s)
        except asyncio.TimeoutError:
            item.future.cancel()  # dropped if its batch has not started; ignored if it has
            self.metrics.rejected.labels(self.task, "timeout").inc()
            raise Timeout(f"the {self.task} request did not finish within {self.timeout_s:g} s") from None
        except asyncio.CancelledError:  # the client went away: drop the item too
            item.future.cancel()
            raise

    # -- worker side --------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.task}")

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(Overloaded("the server is shutting down"))
        self._queue.clear()

    def _take(self) -> list[Item]:
        """Pop the oldest live item and every queued item with its key, up to the row limit."""
        while self._queue and self._queue[0].future.done():
            self._queue.popleft()  # timed out while waiting
        if not self._queue:
            return []
        head = self._queue.popleft()
        batch, rows, keep = [head], head.rows, deque()
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():
                continue
            if item.key == head.key and rows + item.rows <= self.max_batch_size:
                batch.append(item)
                rows += item.rows
            else:
                keep.append(item)
        self._queue = keep + self._queue
        return batch

    def _ready_rows(self, key: Hashable) -> int:
        return sum(i.rows for i in self._queue if i.key == key and not i.future.done())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            head = self._queue[0]
            deadline = head.enqueued + self.max_wait
            while self._ready_rows(head.key) < self.max_batch_size and (wait := deadline - time.perf_counter()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            self.metrics.queue_depth.labels(self.task).set(len(self._queue))
            if not batch:
                continue
            try:
                await self._run(loop, batch)
            except Exception as exc:  # noqa: BLE001 - a bug here must fail this batch, not stop the loop
                log.exception("batcher %s failed to deliver a batch", self.task)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)

    async def _run(self, loop, batch: list[Item]) -> None:
        rows = sum(i.rows for i in batch)
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self.executor, self.run_batch, [i.payload for i in batch])
        except Exception as exc:  # noqa: BLE001 - the whole call failed: every item gets it
            results = [exc] * len(batch)
        self.metrics.batch_size.labels(self.task).observe(rows)
        self.metrics.batch_seconds.labels(self.task).observe(time.perf_counter() - started)
        for item, result in zip(batch, results, strict=True):
            self.metrics.adapter_rows.labels(self.task, item.adapter).inc(item.rows)
            settle(item, result)


def settle(item: Item, result) -> None:
    """Hand a computed result (or the exception that replaced it) to the request waiting on
    `item`, unless it already left (timed out, disconnected)."""
    if item.future.done():
        return
    if isinstance(result, BaseException):
        item.future.set_exception(result)
    else:
        item.future.set_result(result)
