"""VCRA math on one wrapped projection, for a batch of rows that may each use a
different adapter (and the shared pair draw).

    delta(x) = s * Λb ⊙ ( B ( Λa ⊙ (A x) ) )                        x: (n, L, d_in)

Λa (r), Λb (d_out) and s arrive already gathered per row, shaped (m, r), (m, d_out)
and (m,), where m is n (one vector set per row) or 1 (every row alike, a live
training adapter). Whatever the number of distinct adapters, a projection costs the
two matmuls with the shared A and B plus elementwise scaling; the fused vision qkv
shares its A x between the q block and the k/v blocks.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from adapters.sites import Site


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


def per_row(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(m, k) -> (m, 1, ..., 1, k) to broadcast over the token axes of an ndim input."""
    return t.reshape(t.shape[0], *([1] * (ndim - 2)), t.shape[-1])


def vcra_delta_(site: Site, x: torch.Tensor, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                vectors: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """out += s · Λb ⊙ (B (Λa ⊙ (A x))) in place, for `site`; returns out.

    x (n, L, in), out (n, L, out). a (r, in) and b (proj_out, r) are the pair already
    sliced to the site (dims rule) and cast to x's dtype. vectors: [(Λa, s·Λb)] shaped
    (m, 1, r) and (m, 1, proj_out) with m = n or 1, one for q/k/v, two (q, kv) for the
    fused vision qkv, whose out is [q; k; v] with k and v sharing the kv vectors.
    In place is safe under autograd: a Linear's backward does not read its output."""
    ax = F.linear(x, a)  # (n, L, r), shared by q and kv of a fused qkv
    if site.proj != "qkv":
        lam_a, slam_b = vectors[0]
        return out.add_(F.linear(ax * lam_a, b) * slam_b)
    (qa, qb), (kva, kvb) = vectors
    out3 = out.unflatten(-1, (3, -1))  # (n, L, 3, h) view of out
    out3[..., 0, :] += F.linear(ax * qa, b) * qb
    out3[..., 1:, :] += (F.linear(ax * kva, b) * kvb).unsqueeze(-2)  # the same delta on k and v
    return out


def side_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, lam_a: torch.Tensor,
               lam_b: torch.Tensor) -> torch.Tensor:
    """QASN's x w_i = Λb ⊙ (B (Λa ⊙ (A x))) on fusion states x (n, L, d): the VCRA
    operator without s. lam_a (m, r), lam_b (m, d)."""
    d = x.shape[-1]
    u = F.linear(x, a[:, :d].to(x.dtype)) * per_row(lam_a.to(x.dtype), x.dim())
    return F.linear(u, b[:d].to(x.dtype)) * per_row(lam_b.to(x.dtype), x.dim())
