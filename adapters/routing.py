"""Per-call routing: which adapter each row of a batch uses.

Routing is data handed to one call, never a model-wide "active adapter". A task
function enters `routed(routing)` for the duration of its forward; adapter layers
read `current_routing()`. The value lives in a `ContextVar`, so two calls running
at once in different threads or tasks each see their own routing.

Rows multiply inside a call: beam search expands every row into `num_beams`
consecutive rows (`repeat_interleave`), and candidate ranking expands each row into
its candidates the same way. `expand_rows` maps the routing's (B,) row indices to
any batch of n = B * k rows laid out like that.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

_CURRENT: ContextVar[Any] = ContextVar("unitrans_routing", default=None)


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
    in force (e.g. a live adapter entered with `adapters.attach`)."""
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
