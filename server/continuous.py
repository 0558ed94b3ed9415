"""Iteration-level ("continuous") batching of greedy captions: requests join and leave a
running decode at token boundaries instead of waiting for a whole batch's decode.

    python -m server --caption-scheduler continuous      # greedy captions; beams stay batched
    scheduler = ContinuousCaptions(engine, executor, settings, metrics); scheduler.start()
    text = await scheduler.submit(rows, rows=1, adapter="caption")

One tick is one call on the model worker thread (so VQA and retrieval batches interleave
with a long decode at token granularity):
  1. rows whose request went away (timeout, client gone) leave;
  2. waiting requests join: when no decode runs, after `max_wait_ms` as in the batcher;
     while one runs, once they fill its free rows or every `caption_join_steps` steps (a
     join rebuilds the routing); only while the adapter table can hold every adapter of
     the batch at once (else they wait, and so does everyone behind them, until rows
     leave: no request starves). A joiner takes a free slot (`greedy_steps.Slots`),
     its image tokens' cross-attention K/V computed under its adapter;
  3. one decoder step for every slot (`greedy_steps.step`): a new row feeds its prompt a
     token per step, then its words; the routing is rebuilt only after joins or a table
     change (a row leaving keeps it: its free slot's output is never read);
  4. rows that wrote [SEP] or reached their max_new_tokens leave (their slot is free, their
     future resolves); when free slots outnumber rows and nobody joins, they are dropped.
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
from server.batcher import Batcher, Item, settle
from server.errors import Overloaded

log = logging.getLogger("unitrans.continuous")
TASK = "caption-continuous"  # metrics label


@dataclass
class _Row:
    item: Item
    adapter: str | None
    max_new_tokens: int
    min_new_tokens: int
    tokens: list[int] = field(default_factory=list)  # generated words, [SEP] included
    fed: int = 0  # tokens fed so far, prompt included


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
        self.join_steps = settings.caption_join_steps
        self._since_join = 0  # ticks since joiners last came in
        self.prompt = gs.prompt_ids(self.bb)  # [DEC] a picture of: fed one per step to a new row
        # worker-thread state (the loop reads it only between ticks)
        self._rows: list[_Row | None] = []  # per slot of _slots: its row, None = free
        self._slots: gs.Slots | None = None
        self._routing = None
        self._routing_key = None  # table generation _routing was built at; None = rebuild

    # -- event loop -------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._live():  # idle: wait for a request, then up to max_wait for more (as the batcher)
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
            live = len(self._live())
            room = self.max_batch_size - live
            joiners = self._take_up_to(room) if not live or self._joinable(room) else []
            self._since_join = 0 if joiners else self._since_join + 1
            self.metrics.queue_depth.labels(self.task).set(len(self._queue))
            started = time.perf_counter()
            try:
                done, deferred, stepped = await loop.run_in_executor(self.executor, self._tick, joiners)
            except Exception as exc:  # noqa: BLE001 - a bug fails the rows it held, not the loop
                log.exception("continuous caption tick failed")
                for item in joiners + [r.item for r in self._live()]:
                    if not item.future.done():
                        item.future.set_exception(exc)
                self._rows, self._slots, self._routing, self._routing_key = [], None, None, None
                continue
            self._queue.extendleft(reversed(deferred))
            if stepped:
                self.metrics.batch_size.labels(self.task).observe(stepped)
                self.metrics.batch_seconds.labels(self.task).observe(time.perf_counter() - started)
            for item, result in done:
                self.metrics.adapter_rows.labels(self.task, item.adapter).inc()
                settle(item, result)

    def _joinable(self, room: int) -> bool:
        """Join a running decode when the waiting requests fill its free rows or `join_steps`
        steps have passed since the last join: a join rebuilds the batch's routing (its per-row
        adapter matrices folded again), so joiners arriving a step apart share one."""
        live = sum(1 for i in self._queue if not i.future.done())
        return room > 0 and live > 0 and (live >= room or self._since_join >= self.join_steps)

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
        for row in self._live():
            if not row.item.future.done():
                row.item.future.set_exception(Overloaded("the server is shutting down"))

    # -- model worker -----------------------------------------------------------------------
    def _live(self) -> list[_Row]:
        return [r for r in self._rows if r is not None]

    def _tick(self, joiners: list[Item]) -> tuple[list, list[Item], int]:
        """One decoder step for every slot, joiners placed first: ([(item, caption | error)] of
        rows that finished or failed, joiners deferred (no room in the adapter table), rows stepped)."""
        done: list = []
        with torch.inference_mode():
            self._free([j for j, r in enumerate(self._rows) if r is not None and r.item.future.done()])
            admitted, deferred = self._admit(joiners, done)
            if admitted:
                self._join(admitted)
            elif self._slots is not None and 2 * len(self._live()) < len(self._rows):
                self._compact()  # free slots outnumber rows (the load dropped): stop computing them
            live = [j for j, r in enumerate(self._rows) if r is not None]
            if not live:
                self._rows, self._slots, self._routing, self._routing_key = [], None, None, None
                return done, deferred, 0
            logits = gs.step(self.bb, self._slots, routing=self._slot_routing())
            words = self._choose(logits).tolist()  # (B,)
            feed = self._slots.feed.tolist()
            finished = []
            for j in live:
                row = self._rows[j]
                row.fed += 1
                if row.fed < len(self.prompt):  # still feeding the prompt: its logits are not read
                    feed[j] = self.prompt[row.fed]
                    continue
                row.tokens.append(words[j])
                feed[j] = words[j]
                if words[j] == self.sep or len(row.tokens) >= row.max_new_tokens:
                    finished.append(j)
            self._slots.feed = torch.tensor(feed, dtype=torch.long, device=self._slots.feed.device)
            tok = self.bb.processor.tokenizer
            done += [(self._rows[j].item, tok.decode(self._rows[j].tokens, skip_special_tokens=True).strip())
                     for j in finished]
            self._free(finished)
        return done, deferred, len(live)

    def _choose(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) -> (B,) greedy words; a slot not generating (prompt, free) has a minimum of 0."""
        generated = torch.tensor([len(r.tokens) if r else 0 for r in self._rows], device=logits.device)
        minimum = torch.tensor([r.min_new_tokens if r else 0 for r in self._rows], device=logits.device)
        return gs.choose(self.bb, logits, generated, minimum)

    def _free(self, slots: list[int]) -> None:
        if slots:
            self._slots.free(slots)
            for j in slots:
                self._rows[j] = None

    def _compact(self) -> None:
        keep = [j for j, r in enumerate(self._rows) if r is not None]
        self._slots = self._slots.compact(keep) if keep else None
        self._rows = [self._rows[j] for j in keep]
        self._routing_key = None  # rows moved: rebuild

    def _fits(self, names: set[str]) -> bool:
        """Can the table hold all of `names` at once beside the pinned adapters outside them?"""
        table = self.registry.table
        pinned_other = sum(1 for n in table.names() if table.pinned(n) and n not in names)
        return len(names) <= table.capacity - pinned_other

    def _admit(self, joiners: list[Item], done: list) -> tuple[list[Item], list[Item]]:
        """Load the adapters of the running rows and of the joiners that fit: (admitted, deferred).
        Joiners whose adapter cannot be loaded fail (into `done`); running rows whose adapter
        cannot be reloaded (its file gone after an eviction) fail and leave."""
        live = self._live()
        running = [r.adapter for r in live if r.adapter is not None]
        self.registry.table.touch(running)  # evict others first
        names, admitted, deferred = set(running), [], []
        for item in joiners:
            name = item.payload.adapter
            first = not live and not admitted  # one request always gets a try
            if deferred or not (name is None or name in names or first or self._fits(names | {name})):
                deferred.append(item)  # and everyone behind it, so it is next when rows leave
                continue
            admitted.append(item)
            if name is not None:
                names.add(name)
        failed = self.registry.prepare(running + [i.payload.adapter for i in admitted])
        if failed:
            lost = [j for j, r in enumerate(self._rows) if r is not None and r.adapter in failed]
            done += [(self._rows[j].item, failed[self._rows[j].adapter]) for j in lost]
            self._free(lost)
            done += [(i, failed[i.payload.adapter]) for i in admitted if i.payload.adapter in failed]
            admitted = [i for i in admitted if i.payload.adapter not in failed]
        return admitted, deferred

    def _slot_routing(self):
        """The routing of every slot (free ones: frozen), rebuilt when rows joined or moved or the
        table changed; a row leaving keeps it (its free slot's output is never read)."""
        generation = self.registry.table.generation
        if self._routing_key != generation:
            self._routing = self.registry.routing([r.adapter if r is not None else None for r in self._rows])
            self._routing_key = generation
        return self._routing

    def _join(self, admitted: list[Item]) -> None:
        """The joiners into free slots (else new ones), their image tokens' cross K/V computed."""
        if self._live():
            self.metrics.joined_running.inc(len(admitted))
        rows = [item.payload for item in admitted]  # engine.Rows, one image each
        embeds = torch.cat(self.engine._image_tokens(rows))  # (n, T, Hv)
        names = [r.adapter for r in rows]
        free = [j for j, r in enumerate(self._rows) if r is None][: len(rows)]
        if free:
            self._slots.place(self.bb, free, embeds[: len(free)], routing=self.registry.routing(names[: len(free)]))
        if len(rows) > len(free):
            new = gs.Slots.open(self.bb, embeds[len(free):], routing=self.registry.routing(names[len(free):]))
            self._slots = new if self._slots is None else self._slots.extend(new)
            self._rows += [None] * new.size
        at = free + list(range(len(self._rows) - (len(rows) - len(free)), len(self._rows)))
        for j, item, r in zip(at, admitted, rows, strict=True):
            self._rows[j] = _Row(item, r.adapter, r.options.max_new_tokens, r.options.min_new_tokens)
        self._routing_key = None  # rows joined: rebuild
