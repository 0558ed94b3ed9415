"""Iteration-level ("continuous") batching of greedy captions: requests join and leave a
running decode at token boundaries instead of waiting for a whole batch's decode.

    python -m server --caption-scheduler continuous      # greedy captions; beams stay batched
    scheduler = ContinuousCaptions(engine, executor, settings, metrics); scheduler.start()
    text = await scheduler.submit(rows, rows=1, adapter="caption")

One tick is one call on the model worker thread (so VQA and retrieval batches interleave
with a long decode at token granularity):
  1. running rows whose request went away (timeout, client gone) leave;
  2. waiting requests are admitted while the batch has room (`max_batch_size` rows), once
     they fill it or the oldest has waited `max_wait_ms` (joiners share a prompt pass), and
     while the adapter table can hold every adapter of the batch at once (else they wait,
     and so does everyone behind them, until rows leave: no request starves);
  3. the running rows advance one token (`greedy_steps.step`, their routing rebuilt only
     when the rows or the table changed);
  4. the admitted ones run their prompt pass and first token (`greedy_steps.prefill`)
     and are appended to the running batch;
  5. rows that wrote [SEP] or reached their max_new_tokens leave; their futures resolve.
Each row keeps its own max/min_new_tokens, so requests of any length share the decode.
A row's tokens equal those `from_image_tokens.captions` gives it (tests/test_continuous.py).

Adapters. A request's adapter is loaded when it joins; on every tick the running rows'
adapters are marked used (LRU) before any load, so a load evicts someone else's. An
adapter reloaded by an admin while a caption is being written serves the rest of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import torch

from adapters.backbone import greedy_steps as gs
from server.batcher import Batcher, Item
from server.errors import Overloaded

log = logging.getLogger("unitrans.continuous")
TASK = "caption-continuous"  # metrics label


@dataclass
class _Row:
    item: Item
    adapter: str | None
    max_new_tokens: int
    min_new_tokens: int
    tokens: list[int] = field(default_factory=list)


class ContinuousCaptions(Batcher):
    """A `Batcher` (same queue bound, timeouts, 503s, shutdown) whose loop runs ticks."""

    def __init__(self, engine, executor, settings, metrics):
        super().__init__(TASK, None, executor, max_batch_size=settings.max_batch_size,
                         max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size,
                         timeout_s=settings.request_timeout_s, retry_after_s=settings.retry_after_s, metrics=metrics)
        self.engine = engine
        self.bb = engine.bb
        self.registry = engine.registry
        self.sep = self.bb.config.text_config.sep_token_id
        # worker-thread state (the loop reads len(_rows) only between ticks)
        self._rows: list[_Row] = []  # in the row order of _run
        self._run: gs.Running | None = None
        self._routing = None
        self._routing_key = None  # (row adapter names, table generation) _routing was built for

    # -- event loop -------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._rows:  # idle: wait for a request, then up to max_wait for more (as the batcher)
                while not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                deadline = self._queue[0].enqueued + self.max_wait
                while self._ready_rows(None) < self.max_batch_size and (wait := deadline - time.perf_counter()) > 0:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), wait)
                    except asyncio.TimeoutError:
                        break
            room = self.max_batch_size - len(self._rows)
            joiners = self._take_up_to(room) if not self._rows or self._joinable(room) else []
            self.metrics.queue_depth.labels(self.task).set(len(self._queue))
            started = time.perf_counter()
            try:
                done, deferred, stepped = await loop.run_in_executor(self.executor, self._tick, joiners)
            except Exception as exc:  # noqa: BLE001 - a bug fails the rows it held, not the loop
                log.exception("continuous caption tick failed")
                for item in joiners + [r.item for r in self._rows]:
                    if not item.future.done():
                        item.future.set_exception(exc)
                self._rows, self._run, self._routing, self._routing_key = [], None, None, None
                continue
            self._queue.extendleft(reversed(deferred))
            if stepped:
                self.metrics.batch_size.labels(self.task).observe(stepped)
                self.metrics.batch_seconds.labels(self.task).observe(time.perf_counter() - started)
            for item, result in done:
                self.metrics.adapter_rows.labels(self.task, item.adapter).inc()
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    def _joinable(self, room: int) -> bool:
        """Join a running decode when the waiting requests fill its room or the oldest has waited
        max_wait_ms: joiners share one prompt pass instead of one each per tick."""
        live = [i for i in self._queue if not i.future.done()]
        return room > 0 and bool(live) and (len(live) >= room or time.perf_counter() - live[0].enqueued >= self.max_wait)

    def _take_up_to(self, room: int) -> list[Item]:
        """The oldest live queued items, at most `room`."""
        out = []
        while self._queue and len(out) < room:
            item = self._queue.popleft()
            if not item.future.done():
                out.append(item)
        return out

    async def stop(self) -> None:
        await super().stop()
        for row in self._rows:
            if not row.item.future.done():
                row.item.future.set_exception(Overloaded("the server is shutting down"))

    # -- model worker -----------------------------------------------------------------------
    def _tick(self, joiners: list[Item]) -> tuple[list, list[Item], int]:
        """One token for every running row, joiners in: ([(item, caption | error)] of rows that
        finished or failed, joiners deferred (no room in the adapter table), rows computed)."""
        done: list = []
        with torch.inference_mode():
            gone = [r.item.future.done() for r in self._rows]
            if any(gone):
                self._keep([not g for g in gone])
            admitted, deferred = self._admit(joiners, done)
            stepped = len(self._rows) + len(admitted)
            if self._rows:
                logits = gs.step(self.bb, self._run, routing=self._running_routing())
                self._run.last = self._choose(logits, self._rows)
                for row, t in zip(self._rows, self._run.last.tolist()):
                    row.tokens.append(t)
            if admitted:
                self._join(admitted, done)
            finished = [bool(r.tokens) and (r.tokens[-1] == self.sep or len(r.tokens) >= r.max_new_tokens)
                        for r in self._rows]
            tok = self.bb.processor.tokenizer
            done += [(r.item, tok.decode(r.tokens, skip_special_tokens=True).strip())
                     for r, f in zip(self._rows, finished) if f]
            if any(finished):
                self._keep([not f for f in finished])
        return done, deferred, stepped

    def _choose(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        generated = torch.tensor([len(r.tokens) for r in rows], device=logits.device)
        minimum = torch.tensor([r.min_new_tokens for r in rows], device=logits.device)
        return gs.choose(self.bb, logits, generated, minimum)  # (B,) on the model's device

    def _keep(self, keep: list[bool]) -> None:
        index = torch.tensor([i for i, k in enumerate(keep) if k], dtype=torch.long)
        self._rows = [r for r, k in zip(self._rows, keep) if k]
        self._run = self._run.select(index.to(self._run.mask.device)) if self._run is not None else None

    def _fits(self, names: set[str]) -> bool:
        """Can the table hold all of `names` at once beside the pinned adapters outside them?"""
        table = self.registry.table
        pinned_other = sum(1 for n in table.names() if table.pinned(n) and n not in names)
        return len(names) <= table.capacity - pinned_other

    def _admit(self, joiners: list[Item], done: list) -> tuple[list[Item], list[Item]]:
        """Load the adapters of the running rows and of the joiners that fit: (admitted, deferred).
        Joiners whose adapter cannot be loaded fail (into `done`); running rows whose adapter
        cannot be reloaded (its file gone after an eviction) fail and leave."""
        running = [r.adapter for r in self._rows if r.adapter is not None]
        self.registry.table.touch(running)  # evict others first
        names, admitted, deferred = set(running), [], []
        for item in joiners:
            name = item.payload.adapter
            first = not self._rows and not admitted  # one request always gets a try
            if deferred or not (name is None or name in names or first or self._fits(names | {name})):
                deferred.append(item)  # and everyone behind it, so it is next when rows leave
                continue
            admitted.append(item)
            if name is not None:
                names.add(name)
        failed = self.registry.prepare(running + [i.payload.adapter for i in admitted])
        if failed:
            lost = [r.adapter in failed for r in self._rows]
            done += [(r.item, failed[r.adapter]) for r, x in zip(self._rows, lost) if x]
            if any(lost):
                self._keep([not x for x in lost])
            done += [(i, failed[i.payload.adapter]) for i in admitted if i.payload.adapter in failed]
            admitted = [i for i in admitted if i.payload.adapter not in failed]
        return admitted, deferred

    def _running_routing(self):
        key = (tuple(r.adapter for r in self._rows), self.registry.table.generation)
        if key != self._routing_key:
            self._routing = self.registry.routing(list(key[0]))
            self._routing_key = key
        return self._routing

    def _join(self, admitted: list[Item], done: list) -> None:
        """The joiners' image tokens, prompt pass and first token, appended to the running batch."""
        if self._rows:
            self.metrics.joined_running.inc(len(admitted))
        rows = [item.payload for item in admitted]  # engine.Rows, one image each
        embeds = torch.cat(self.engine._image_tokens(rows))  # (n, T, Hv)
        new = gs.prefill(self.bb, embeds, routing=self.registry.routing([r.adapter for r in rows]))
        joined = [_Row(item, r.adapter, r.options.max_new_tokens, r.options.min_new_tokens)
                  for item, r in zip(admitted, rows)]
        first = self._choose(new.logits, joined)
        for row, t in zip(joined, first.tolist()):
            row.tokens.append(t)
        self._run = gs.merge(self._run, new.rows, first)
        self._rows += joined
