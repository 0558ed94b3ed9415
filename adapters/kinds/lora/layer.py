"""LoRA on one projection: delta(x) = (alpha / r) * B (A x), A (r, in), B (out, r), B init 0.

The fused vision qkv (3h x h) is adapted as the one Linear it is (out = 3h), as peft
does. In a batch, each LoRA adapter present is one `MatrixGroup` over its rows (two
matmuls on those rows per site); the live adapter's group covers every row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adapters.runtime.routing import RoutingGroup


def init_pair(seed: int, key: str, rank: int, in_features: int, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ~ kaiming-uniform(a=sqrt(5)) like nn.Linear/peft, from a per-site seeded stream; B = 0."""
    gen = torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + sum(map(ord, key)) * 7919) % 2**63)
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)) on (r, in)
    a = (torch.rand(rank, in_features, generator=gen) * 2 - 1) * bound
    return a, torch.zeros(out_features, rank)


class MatrixGroup(RoutingGroup):
    """One LoRA adapter's rows: per site key (A (r, in), B (out, r)), and alpha / r."""

    def __init__(self, weights: dict[str, tuple[torch.Tensor, torch.Tensor]], scaling: float,
                 requests: torch.Tensor | None):
        self.weights, self.scaling, self.requests = weights, scaling, requests

    def linear(self, routing, module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if module.site_key not in self.weights:
            return out
        a, b = self.weights[module.site_key]
        rows = routing.rows_for(self.requests, x.shape[0])
        xs = x if rows is None else x.index_select(0, rows)
        delta = F.linear(F.linear(xs, a.to(x.dtype)), b.to(x.dtype))  # (m, L, out)
        if rows is None:
            return out.add_(delta, alpha=self.scaling)
        return out.index_add_(0, rows, delta, alpha=self.scaling)
