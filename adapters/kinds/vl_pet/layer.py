"""VL-PET math on one branch, and the routing group that runs one VL-PET adapter's rows.

Encoder module, on a residual branch whose input is x1 and output y (both (n, L, d)):

    Δ(y)  = W_up gelu(W_down y + b_down) + b_up          (r = rank; W_up, b_up init 0)
    y'    = G ⊙ (y + Δ(y))                              G of the adapter's granularity
    then the backbone's own residual: x1 + y' (ViT) or LayerNorm(x1 + y') (text encoder)

The authors' multi-head down projection (h heads of d -> r/h, concatenated) is the
same function as one d -> r Linear with the heads' weights stacked, so it is one
matrix here. gelu is the tanh approximation (their `gelu_new`).

Decoder module, on the value projection of each decoder cross-attention (x = the
encoder states the decoder reads, W_v frozen):

    v = W_v x + W_up gelu(W_down x + b_down) + b_up     (parallel adapter; W_up, b_up init 0)

"small" averages σ over each sequence's real tokens only (the text encoder's attention
mask; image tokens are never padded), so padding added by batching never moves a row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adapters.kinds.vl_pet.config import sublayer_part
from adapters.runtime.routing import RoutingGroup


def init_down(seed: int, key: str, rank: int, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W (rank, d_in), b (rank,) ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (nn.Linear's init) from a
    per-module seeded stream, so an adapter's init never depends on which others exist."""
    gen = torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + sum(map(ord, key)) * 7919 + 17) % 2**63)
    bound = 1.0 / math.sqrt(d_in)
    w = (torch.rand(rank, d_in, generator=gen) * 2 - 1) * bound
    b = (torch.rand(rank, generator=gen) * 2 - 1) * bound
    return w, b


def _bottleneck(p: dict, prefix: str, key: str, x: torch.Tensor) -> torch.Tensor:
    """W_up gelu(W_down x + b_down) + b_up: (..., d_in) -> (..., d_out)."""
    dt = x.dtype
    h = F.gelu(F.linear(x, p[f"{prefix}down.{key}"].to(dt), p[f"{prefix}down_b.{key}"].to(dt)), approximate="tanh")
    return F.linear(h, p[f"{prefix}up.{key}"].to(dt), p[f"{prefix}up_b.{key}"].to(dt))


def gate(p: dict, granularity: str, key: str, x1: torch.Tensor, y1: torch.Tensor,
         mask: torch.Tensor | None) -> torch.Tensor:
    """G for x1, y1 (n, L, d); mask (n, L) of real tokens or None. Broadcastable to (n, L, d)."""
    dt = y1.dtype
    if granularity == "large":  # (n, L, d)
        return 2 * torch.sigmoid(_bottleneck(p, "gate_", key, x1))
    if granularity == "middle-x":  # (n, L, 1)
        return 2 * torch.sigmoid(F.linear(x1 + y1, p[f"gate_w.{key}"].to(dt)[None], p[f"gate_b.{key}"].to(dt)[None]))
    if granularity == "middle-y":  # (d,)
        return 1 + p[f"gate.{key}"].to(dt)
    # small: (n, 1, 1)
    s = torch.sigmoid(F.linear(torch.cat([x1, y1], dim=-1), p[f"gate_w.{key}"].to(dt)[None],
                               p[f"gate_b.{key}"].to(dt)[None]))  # (n, L, 1)
    if mask is None:
        return 2 * s.mean(dim=1, keepdim=True)
    m = mask.to(dt)[..., None]  # (n, L, 1)
    return 2 * (s * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1)


def encoder_module(p: dict, granularity: str, key: str, y: torch.Tensor, x1: torch.Tensor,
                   mask: torch.Tensor | None) -> torch.Tensor:
    y1 = y + _bottleneck(p, "", key, y)
    return gate(p, granularity, key, x1, y1, mask) * y1


class VlPetGroup(RoutingGroup):
    """The rows of one VL-PET adapter: its tensors by state-dict name, its granularity."""

    uses_sublayers = True

    def __init__(self, params: dict[str, torch.Tensor], granularity: str, targets: tuple[str, ...],
                 requests: torch.Tensor | None):
        self.p, self.granularity, self.requests = params, granularity, requests
        self.targets = set(targets)

    def linear(self, routing, module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        key = module.site_key
        if f"vdown.{key}" not in self.p:
            return out
        rows = routing.rows_for(self.requests, x.shape[0])
        xs = x if rows is None else x.index_select(0, rows)
        delta = _bottleneck(self.p, "v", key, xs).to(out.dtype)  # (m, L, out)
        return out.add_(delta) if rows is None else out.index_add_(0, rows, delta)

    def sublayer(self, routing, sublayer, y: torch.Tensor, x1: torch.Tensor, mask) -> torch.Tensor:
        if sublayer_part(sublayer) not in self.targets:
            return y
        key = sublayer.key
        rows = routing.rows_for(self.requests, y.shape[0])
        if rows is None:
            return encoder_module(self.p, self.granularity, key, y, x1, mask)
        sub_mask = None if mask is None else mask.index_select(0, rows)
        adapted = encoder_module(self.p, self.granularity, key, y.index_select(0, rows), x1.index_select(0, rows),
                                 sub_mask)
        return y.index_copy(0, rows, adapted.to(y.dtype))  # out of place: y may carry autograd history
