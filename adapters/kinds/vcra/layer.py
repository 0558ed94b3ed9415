"""VCRA math on one wrapped projection, for a batch of rows that may each use a
different adapter (and the shared pair draw).

    delta(x) = s * Λb ⊙ ( B ( Λa ⊙ (A x) ) )                        x: (n, L, d_in)

computed as (A x) M with M = diag(Λa) Bᵀ diag(s·Λb), folded once per call (per row
when rows use different adapters): two matmuls per projection whatever the number
of distinct adapters. The fused vision qkv folds [M_q | M_kv | M_kv] into one M.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F



def pair_generator_seed(seed: int, pair: str) -> int:
    """Each pair has its own stream, so a pair's draw never depends on which other
    pairs exist (targets, backbone parts)."""
    return int.from_bytes(hashlib.sha256(f"unitrans-vcra:{seed}:{pair}".encode()).digest()[:8], "little") >> 1


def draw_pair(seed: int, pair: str, rank: int, d_in: int, d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (r, d_in) ~ N(0, 1/d_in), B (d_out, r) ~ N(0, 1/r): fp32 on CPU, same bits on every
    machine. The variances keep B Λa A x at the scale of x, so Λb reads as a relative update."""
    gen = torch.Generator(device="cpu").manual_seed(pair_generator_seed(seed, pair))
    a = torch.randn(rank, d_in, generator=gen, dtype=torch.float32) / d_in**0.5
    b = torch.randn(d_out, rank, generator=gen, dtype=torch.float32) / rank**0.5
    return a, b


def fold(lam_a: torch.Tensor, b_t: torch.Tensor, slam_b: torch.Tensor) -> torch.Tensor:
    """M = diag(Λa) Bᵀ diag(s·Λb): (m, r), (r, d_out), (m, d_out) -> (m, r, d_out).

    Then delta(x) = (A x) M, so a projection costs two matmuls (A x, then M) whatever
    the adapters: M is per row (batched matmul) when rows differ, one matrix when
    they do not. Rows of the frozen slot have M = 0: an exact zero delta."""
    return lam_a[:, :, None] * b_t[None] * slam_b[:, None, :]


def apply_delta_(x: torch.Tensor, out: torch.Tensor, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """out += (x Aᵀ) M in place. x (n, L, in), out (n, L, out), a (r, in); m (r, out) shared
    by every row or (n, r, out) per row. In place is safe under autograd: a Linear's
    backward does not read its output."""
    # one dtype for the in-place product: bf16 backbones and autocast hand in bf16
    # activations while the vectors (and so m) stay fp32; no-ops in fp32
    ax = F.linear(x, a.to(x.dtype)).to(out.dtype)  # (n, L, r)
    m = m.to(out.dtype)
    if m.dim() == 2:
        out.view(-1, out.shape[-1]).addmm_(ax.reshape(-1, ax.shape[-1]), m)
    else:
        out.baddbmm_(ax, m)
    return out
