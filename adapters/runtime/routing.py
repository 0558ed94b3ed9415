"""Per-call routing: which adapter each row of a batch uses, and the scope it runs in.

Routing is data handed to one call, never a model-wide "active adapter". A task
function enters `routed(routing)` for the duration of its forward; the wrappers and
hooks of `adapters.runtime.injection` read `current_routing()`. The value lives in a
`ContextVar`, so two calls running at once in different threads or tasks each see
their own routing.

A `Routing` is built by `AdapterTable.routing(names)` (serving: per-row slots of the
table) or by `adapter.routing()` (training: one live adapter, gradients flow). It
holds the rows' slots and a list of *groups*: each group is made by one kind
(`adapters.kinds.<kind>`) for the rows that run through the same tensors, and
implements the `RoutingGroup` calls below. This module never looks inside a group.

Rows multiply inside a call: beam search expands every row into `num_beams`
consecutive rows (`repeat_interleave`), and candidate ranking expands each row into
its candidates the same way. `expand_rows` / `Routing.rows_for` map the (B,) request
indices to any batch of n = B * k rows laid out like that.

A table routing is valid until the table next changes (checked per call into it) and
caches what its groups gather and fold (per site and row count; decoding calls each
site once per token). Live routings cache nothing: build one per training step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from adapters.errors import AdapterTableError

_CURRENT: ContextVar[Any] = ContextVar("unitrans_routing", default=None)
CACHE_BYTES = 256 * 2**20  # cap on what one table routing keeps (folded per-row matrices)


@contextmanager
def routed(routing: Any) -> Iterator[None]:
    """Make `routing` visible to adapter layers for the calls inside the block.
    `None` means every row uses the frozen backbone."""
    token = _CURRENT.set(routing)
    try:
        yield
    finally:
        _CURRENT.reset(token)


@contextmanager
def routed_if_given(routing: Any) -> Iterator[None]:
    """`routed(routing)` when a routing is given; otherwise the caller's routing stays
    in force (e.g. a live adapter bound for training)."""
    if routing is None:
        yield
    else:
        with routed(routing):
            yield


def current_routing() -> Any:
    return _CURRENT.get()


def expand_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) per-request indices -> (n,) per-row indices for a batch of n = B * k rows
    in which each request's k rows are consecutive."""
    batch = rows.shape[0]
    if n == batch:
        return rows
    if batch == 0 or n % batch:
        raise ValueError(f"a batch of {n} rows cannot come from {batch} routed requests")
    return rows.repeat_interleave(n // batch)


class RoutingGroup:
    """Rows of one call that run through the same adapter tensors; made by a kind.

    `requests` (m,) are the request indices the group serves (None = every row: rows it
    does not serve must then get an exact zero delta from it). The injected modules
    call these; each returns its output with the group's rows adapted:

        linear(routing, module, x, out)        a wrapped projection (`AdaptedLinear`): out += delta
        fusion_block(routing, i, n, x, out)    after fusion block i (QASN)
        sublayer(routing, module, y, x1, mask) a sublayer's output y before its residual
                                               add x1 (`GatedSublayer`); mask (B, L) or None
        frames(routing, frames)                video frame tokens (n, F, T, Hv) after the ViT, where
                                               the fusion encoder and ITC read them (`tasks.temporal`)
    """

    requests: torch.Tensor | None = None
    uses_fusion_blocks = False  # fusion_block does something (the hook skips work otherwise)
    uses_sublayers = False
    uses_frames = False  # frames does something (video tokens pass untouched otherwise)

    def linear(self, routing: "Routing", module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out

    def fusion_block(self, routing: "Routing", index: int, num_blocks: int, hidden_in: torch.Tensor,
                     out: torch.Tensor) -> torch.Tensor:
        return out

    def sublayer(self, routing: "Routing", module, y: torch.Tensor, x1: torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
        return y

    def frames(self, routing: "Routing", frames: torch.Tensor) -> torch.Tensor:
        return frames


class Routing:
    def __init__(self, slots: torch.Tensor | None, groups: list[RoutingGroup], guard=None):
        if slots is None and any(g.requests is not None for g in groups):
            raise ValueError("groups of a routing without slots must cover all rows")
        self.slots = slots  # (B,) slot per request, 0 = frozen; None = one live adapter on every row
        self.groups = groups
        self.has_fusion = any(g.uses_fusion_blocks for g in groups)
        self.has_sublayers = any(g.uses_sublayers for g in groups)
        self.has_frames = any(g.uses_frames for g in groups)
        self._guard = guard  # (table, generation) for table-made routings
        self._cache: dict | None = {} if guard is not None else None
        self._cached_bytes = 0

    @property
    def batch_size(self) -> int | None:
        return None if self.slots is None else self.slots.shape[0]

    def check(self) -> None:
        if self._guard is not None and self._guard[0].generation != self._guard[1]:
            raise AdapterTableError("this routing is stale: the adapter table changed after routing() built it")

    def memo(self, key, make, nbytes=None):
        """`make()` once per key for a table routing (within CACHE_BYTES); always for a live one."""
        if self._cache is None:
            return make()
        if key not in self._cache:
            value = make()
            size = nbytes(value) if nbytes else 0
            if self._cached_bytes + size > CACHE_BYTES:
                return value
            self._cached_bytes += size
            self._cache[key] = value
        return self._cache[key]

    @property
    def caches(self) -> bool:
        """True for table routings (fold once per call, keep it); False for live ones."""
        return self._cache is not None

    def cached(self, key, default=False):
        return default if self._cache is None else self._cache.get(key, default)

    # -- rows ------------------------------------------------------------------------------
    def slots_for(self, n: int) -> torch.Tensor | None:
        return None if self.slots is None else self.memo(("slots", n), lambda: expand_rows(self.slots, n))

    def rows_for(self, requests: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """Request indices (m,) -> row indices of an n-row batch (each request's k rows consecutive)."""
        if requests is None:
            return None

        def make():
            batch = self.slots.shape[0]
            if n % batch:
                raise ValueError(f"a batch of {n} rows cannot come from {batch} routed requests")
            k = n // batch
            return (requests[:, None] * k + torch.arange(k, device=requests.device)).reshape(-1)

        return self.memo(("rows", id(requests), n), make)

    # -- called by the injected modules (adapters.runtime.injection) ---------------------------
    def linear(self, module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        self.check()
        for group in self.groups:
            out = group.linear(self, module, x, out)
        return out

    def fusion_block(self, index: int, num_blocks: int, hidden_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        self.check()
        for group in self.groups:
            if group.uses_fusion_blocks:
                out = group.fusion_block(self, index, num_blocks, hidden_in, out)
        return out

    def sublayer(self, module, y: torch.Tensor, x1: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        self.check()
        for group in self.groups:
            if group.uses_sublayers:
                y = group.sublayer(self, module, y, x1, mask)
        return y

    def frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Video frame tokens (n, F, T, Hv) through every group's temporal part."""
        self.check()
        for group in self.groups:
            if group.uses_frames:
                frames = group.frames(self, frames)
        return frames
