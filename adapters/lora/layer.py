"""LoRA on one projection: delta(x) = (alpha / r) * B (A x), A (r, in), B (out, r), B init 0.

The fused vision qkv (3h x h) is adapted as the one Linear it is (out = 3h), as peft
does. The per-row forward (several LoRA adapters in one batch, grouped by adapter)
is `mixed.Routing.linear`'s matrix-group branch; this module draws the initial tensors.
"""

from __future__ import annotations

import math

import torch


def init_pair(seed: int, key: str, rank: int, in_features: int, out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ~ kaiming-uniform(a=sqrt(5)) like nn.Linear/peft, from a per-site seeded stream; B = 0."""
    gen = torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + sum(map(ord, key)) * 7919) % 2**63)
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)) on (r, in)
    a = (torch.rand(rank, in_features, generator=gen) * 2 - 1) * bound
    return a, torch.zeros(out_features, rank)
