"""VCRA/VeRA in a batch: the vector bank every slot writes into, and the routing group
that runs all VCRA/VeRA rows of one call.

    VectorBank    per-slot Λa, Λb, s and QASN vectors, first axis = slot (slot 0 = zeros)
    PairGroup     one shared (A, B) set and the requests reading it
    VectorRouting the RoutingGroup: every pair group of the call, for q/k/v sites, QASN and
                  the temporal module on video frame tokens (temporal.py)

Cost of one projection: per pair group, x Aᵀ then one (batched) matmul with the
folded M = diag(Λa) Bᵀ diag(s·Λb) (see `layer.fold`), for any number of distinct
VCRA adapters sharing the pair. A single pair group runs over every row of the call:
rows of other slots (frozen, LoRA, VL-PET) hold zero vectors in this bank -> an exact
zero delta. Table routings fold every vector group of a pair once per call and row
count (cached by the routing); live routings fold per site so autograd keeps (r, out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adapters.kinds.vcra.config import group_keys, proj_out
from adapters.kinds.vcra.layer import apply_delta_, fold
from adapters.kinds.vcra.qasn import side_network_step
from adapters.kinds.vcra.temporal import apply_temporal
from adapters.runtime.routing import RoutingGroup


@dataclass
class VectorBank:
    """Vectors of every slot, stacked so a batch gathers them in a few ops."""

    groups: dict[str, int]  # group key ("vision_0_q", ...) -> column g
    lam_a: torch.Tensor  # (S, G, R)  R >= every rank reading it (zero beyond an adapter's rank)
    lam_b: torch.Tensor  # (S, G, D)  D = widest group (zero beyond a group's width)
    scale: torch.Tensor  # (S,)
    qasn: tuple[torch.Tensor, ...] | None = None  # Λa (S, N, R), Λb, α, β (S, N, d); N fusion blocks
    temporal: tuple[torch.Tensor, torch.Tensor] | None = None  # codes (S, K, Hv), motion (S, 2, Hv); zero = off
    # table banks only: shared pairs, drawn once per pair key and refcounted by the slots reading them
    pairs: dict[tuple, list] = field(default_factory=dict)  # pair key -> [{pair: (A, B)}, refcount, rank]

    def tensors(self) -> list[torch.Tensor]:
        return [self.lam_a, self.lam_b, self.scale, *(self.qasn or ()), *(self.temporal or ())]


@dataclass
class PairGroup:
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # pair -> (A (r, d_in), B (d_out, r))
    pair_of: dict[str, str]  # modality -> pair name
    rank: int
    requests: torch.Tensor | None  # (m,) request indices, None = all rows
    qasn_pair: str | None = None  # pair the fusion side network reads; None = no QASN in this group


def gather(t: torch.Tensor, sl: torch.Tensor | None) -> torch.Tensor:
    """Rows `sl` of a slot-first tensor; None = slot 0 of a one-slot (live) bank, kept (1, ...)."""
    return t[:1] if sl is None else t.index_select(0, sl)


class VectorRouting(RoutingGroup):
    """All VCRA/VeRA rows of one call: a bank and its pair groups."""

    def __init__(self, bank: VectorBank, pair_groups: list[PairGroup], temporal: bool = False):
        self.bank = bank
        self.pair_groups = pair_groups
        self.requests = None  # pair groups carry their own requests; rows outside read zeros
        self.uses_fusion_blocks = any(g.qasn_pair is not None for g in pair_groups)
        self.uses_frames = temporal and bank.temporal is not None  # some row has the temporal module

    def frames(self, routing, frames: torch.Tensor) -> torch.Tensor:
        """The temporal module on video frame tokens (n, F, T, Hv), every row through its slot's
        codes and motion vectors (slots without the module hold zeros: an exact zero delta)."""
        n = frames.shape[0]
        slots = routing.slots_for(n)

        def make():
            codes, motion = self.bank.temporal
            return gather(codes, slots), gather(motion, slots)  # (n | 1, K, Hv), (n | 1, 2, Hv)

        codes, motion = routing.memo(("temporal", n), make)
        return apply_temporal(frames, codes, motion)

    def group_slots(self, routing, gi: int, group: PairGroup, n: int):
        """(rows, slots of those rows or None (= slot 0), single) for pair group gi in an n-row
        batch; single = every row of the group uses the same slot (then vectors are (1, ...))."""

        def make():
            rows = routing.rows_for(group.requests, n)
            slots = routing.slots_for(n)
            if slots is None:
                return rows, None, True
            sl = slots if rows is None else slots.index_select(0, rows)
            first = sl[:1]
            if bool((sl == first).all()):
                return rows, first, True
            return rows, sl, False

        return routing.memo(("vec-gslots", gi, n), make)

    def _folded(self, routing, gi: int, group: PairGroup, n: int, pair: str, dtype: torch.dtype):
        """M for every vector group read through `pair`, folded in one go:
        ({group key: column j}, M (m, Gp, r, D)), m = rows of the group or 1."""
        bank = self.bank

        def make():
            _, sl, _ = self.group_slots(routing, gi, group, n)
            keys = [k for k in bank.groups if group.pair_of.get(k.rsplit("_", 2)[0]) == pair]
            cols = torch.tensor([bank.groups[k] for k in keys], device=bank.scale.device)
            lam_a = gather(bank.lam_a, sl).index_select(1, cols)[..., : group.rank]  # (m, Gp, r)
            slam_b = gather(bank.scale, sl)[:, None, None] * gather(bank.lam_b, sl).index_select(1, cols)
            b_t = group.pairs[pair][1].t()[:, : slam_b.shape[-1]]  # (r, D); narrower groups are zero beyond
            if b_t.shape[1] < slam_b.shape[-1]:
                slam_b = slam_b[..., : b_t.shape[1]]
            m = lam_a[..., None] * b_t * slam_b[:, :, None, :]  # (m, Gp, r, D): diag(Λa) Bᵀ diag(s·Λb)
            return {k: j for j, k in enumerate(keys)}, m.to(dtype)

        return routing.memo(("vec-fold", gi, n, pair, dtype), make, lambda v: v[1].numel() * v[1].element_size())

    def linear(self, routing, module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        for gi, group in enumerate(self.pair_groups):
            key = ("vec-site", gi, module.index, n, x.dtype)
            prepared = routing.cached(key)
            if prepared is False:
                prepared = routing.memo(key, lambda: self._site(routing, gi, group, module, n, x.dtype),
                                        lambda p: 0 if p is None else p[2].numel() * p[2].element_size())
            if prepared is None:
                continue
            rows, a, m = prepared
            if rows is None:
                apply_delta_(x, out, a, m)
            else:
                xs = x.index_select(0, rows)
                out.index_add_(0, rows, apply_delta_(xs, torch.zeros_like(out[: rows.shape[0]]), a, m))
        return out

    def _site(self, routing, gi: int, group: PairGroup, module, n: int, dtype: torch.dtype):
        """(rows, A sliced to the site, M (r, out) or (rows, r, out)) or None if the group
        does not touch this site. Dims rule: A[:, :in], B[:proj_out] (config.py)."""
        site, bank = module.site, self.bank
        keys = group_keys(site)
        pair = group.pair_of.get(site.modality)
        if pair is None or keys[0] not in bank.groups:
            return None
        rows, sl, single = self.group_slots(routing, gi, group, n)
        width = proj_out(site)
        if routing.caches:
            cols, folded = self._folded(routing, gi, group, n, pair, dtype)  # table: fold the pair once
            blocks = [folded[:, cols[key], :, :width] for key in keys]  # (m, r, width) each
        else:  # live routing (training): fold just this site's groups; autograd keeps (r, out) per site
            b_t = group.pairs[pair][1][:width].t()
            scale = gather(bank.scale, sl)[:, None]
            blocks = [fold(gather(bank.lam_a, sl)[:, bank.groups[key], : group.rank], b_t,
                           scale * gather(bank.lam_b, sl)[:, bank.groups[key], :width]).to(dtype) for key in keys]
        if site.proj == "qkv":
            q, kv = blocks
            m = torch.cat([q, kv, kv], dim=-1)  # [q; k; v]: key and value share their vectors
        else:
            m = blocks[0]
        a = group.pairs[pair][0]
        return rows, a[:, : site.in_features].to(dtype), (m[0] if single else m)

    def fusion_block(self, routing, index: int, num_blocks: int, hidden_in: torch.Tensor,
                     out: torch.Tensor) -> torch.Tensor:
        return side_network_step(routing, self, index, num_blocks, hidden_in, out)
