"""The routing object: which adapter each row of one call uses, and the tensors to do it.

A `Routing` is built by `AdapterTable.routing(names)` (serving: per-row slots into
the table's preallocated bank) or by `adapter.routing()` (training: one live
adapter, its own parameters as a one-slot bank, gradients flow). Both run the same
code below, called by the wrapped projections (`injection.AdaptedLinear`) and the
fusion-block hooks (QASN, `adapters.qasn`).

    slots          (B,) slot per request, 0 = frozen backbone (all-zero vectors);
                   None = every row uses slot 0 of a one-slot bank (live adapter)
    bank           VectorBank: per-slot Λa, Λb, s and QASN vectors, first axis = slot
    pair_groups    one per distinct shared pair among the requests: its (A, B) and which
                   requests use it (None = all rows; rows whose slot has zero vectors
                   then get an exact zero delta)
    matrix_groups  LoRA adapters: their own (A, B) per site and their requests

Cost of one projection: per pair group, x Aᵀ then one (batched) matmul with the
folded M = diag(Λa) Bᵀ diag(s·Λb) (see `vcra.layer.fold`), for any number of
distinct VCRA adapters sharing the pair; per LoRA adapter present, two matmuls on its
rows. Rows multiply inside a call (beam search, candidate ranking); request indices
expand with the consecutive layout of `routing.expand_rows`.

A table routing is valid until the table next changes (checked per projection) and
caches what it gathers and folds (per site and row count; decoding calls each site
once per token). Live routings cache nothing: build one per training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adapters.errors import AdapterTableError
from adapters.routing import expand_rows
from adapters.vcra.layer import apply_delta_, fold

CACHE_BYTES = 256 * 2**20  # cap on folded per-row matrices one table routing keeps


@dataclass
class VectorBank:
    """Vectors of every slot, stacked so a batch gathers them in a few ops."""

    groups: dict[str, int]  # group key ("vision_0_q", ...) -> column g
    lam_a: torch.Tensor  # (S, G, R)  R >= every rank reading it (zero beyond an adapter's rank)
    lam_b: torch.Tensor  # (S, G, D)  D = widest group (zero beyond a group's width)
    scale: torch.Tensor  # (S,)
    qasn: tuple[torch.Tensor, ...] | None = None  # Λa (S, N, R), Λb, α, β (S, N, d); N fusion blocks


@dataclass
class PairGroup:
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # pair -> (A (r, d_in), B (d_out, r))
    pair_of: dict[str, str]  # modality -> pair name
    rank: int
    requests: torch.Tensor | None  # (m,) request indices, None = all rows
    qasn_pair: str | None = None  # pair the fusion side network reads; None = no QASN in this group


@dataclass
class MatrixGroup:
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # site key -> (A (r, in), B (out, r))
    scaling: float
    requests: torch.Tensor | None


def site_key(site) -> str:
    return f"{site.modality}_{site.layer}_{site.proj}"


class Routing:
    def __init__(self, slots: torch.Tensor | None, bank: VectorBank | None, pair_groups: list[PairGroup],
                 matrix_groups: list[MatrixGroup], guard=None):
        if slots is None and any(g.requests is not None for g in [*pair_groups, *matrix_groups]):
            raise ValueError("groups of a routing without slots must cover all rows")
        self.slots = slots
        self.bank = bank
        self.pair_groups = pair_groups
        self.matrix_groups = matrix_groups
        self.has_qasn = any(g.qasn_pair is not None for g in pair_groups)
        self._guard = guard  # (table, generation) for table-made routings
        self._cache: dict | None = {} if guard is not None else None
        self._cached_bytes = 0

    @property
    def batch_size(self) -> int | None:
        return None if self.slots is None else self.slots.shape[0]

    def _check(self) -> None:
        if self._guard is not None and self._guard[0].generation != self._guard[1]:
            raise AdapterTableError("this routing is stale: the adapter table changed after routing() built it")

    def _memo(self, key, make, nbytes=None):
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

    # -- rows ------------------------------------------------------------------------------
    def slots_for(self, n: int) -> torch.Tensor | None:
        return None if self.slots is None else self._memo(("slots", n), lambda: expand_rows(self.slots, n))

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

        return self._memo(("rows", id(requests), n), make)

    def group_slots(self, gi: int, group, n: int):
        """(rows, slots of those rows or None (= slot 0), single) for group gi in an n-row batch;
        single = every row of the group uses the same slot (then vectors are (1, ...))."""

        def make():
            rows = self.rows_for(group.requests, n)
            slots = self.slots_for(n)
            if slots is None:
                return rows, None, True
            sl = slots if rows is None else slots.index_select(0, rows)
            first = sl[:1]
            if bool((sl == first).all()):
                return rows, first, True
            return rows, sl, False

        return self._memo(("gslots", gi, n), make)

    def _gather(self, t: torch.Tensor, sl: torch.Tensor | None) -> torch.Tensor:
        return t[:1] if sl is None else t.index_select(0, sl)

    def _folded(self, gi: int, group: PairGroup, n: int, pair: str, dtype: torch.dtype):
        """M for every vector group read through `pair`, folded in one go:
        ({group key: column j}, M (m, Gp, r, D)), m = rows of the group or 1."""

        def make():
            _, sl, _ = self.group_slots(gi, group, n)
            keys = [k for k in self.bank.groups if group.pair_of.get(k.rsplit("_", 2)[0]) == pair]
            cols = torch.tensor([self.bank.groups[k] for k in keys], device=self.bank.scale.device)
            lam_a = self._gather(self.bank.lam_a, sl).index_select(1, cols)[..., : group.rank]  # (m, Gp, r)
            slam_b = self._gather(self.bank.scale, sl)[:, None, None] * self._gather(self.bank.lam_b, sl).index_select(1, cols)
            b = group.pairs[pair][1]
            b_t = b.t()[:, : slam_b.shape[-1]]  # (r, D); groups narrower than D are zero beyond their width
            if b_t.shape[1] < slam_b.shape[-1]:
                slam_b = slam_b[..., : b_t.shape[1]]
            m = lam_a[..., None] * b_t * slam_b[:, :, None, :]  # (m, Gp, r, D): diag(Λa) Bᵀ diag(s·Λb)
            return {k: j for j, k in enumerate(keys)}, m.to(dtype)

        return self._memo(("fold", gi, n, pair, dtype), make, lambda v: v[1].numel() * v[1].element_size())

    # -- called by AdaptedLinear --------------------------------------------------------------
    def linear(self, module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        self._check()
        n = x.shape[0]
        for gi, group in enumerate(self.pair_groups):
            key = ("site", gi, module.index, n, x.dtype)
            prepared = self._cache.get(key, False) if self._cache is not None else False
            if prepared is False:
                prepared = self._memo(key, lambda: self._site(gi, group, module, n, x.dtype),
                                      lambda p: 0 if p is None else p[2].numel() * p[2].element_size())
            if prepared is None:
                continue
            rows, a, m = prepared
            if rows is None:
                apply_delta_(x, out, a, m)
            else:
                xs = x.index_select(0, rows)
                out.index_add_(0, rows, apply_delta_(xs, torch.zeros_like(out[: rows.shape[0]]), a, m))
        for group in self.matrix_groups:
            if module.site_key not in group.weights:
                continue
            a, b = group.weights[module.site_key]
            rows = self.rows_for(group.requests, n)
            xs = x if rows is None else x.index_select(0, rows)
            delta = F.linear(F.linear(xs, a.to(x.dtype)), b.to(x.dtype))  # (m, L, out)
            out.add_(delta, alpha=group.scaling) if rows is None else out.index_add_(0, rows, delta, alpha=group.scaling)
        return out

    def _site(self, gi: int, group: PairGroup, module, n: int, dtype: torch.dtype):
        """(rows, A sliced to the site, M (r, out) or (rows, r, out)) or None if the group
        does not touch this site. Dims rule: A[:, :in], B[:proj_out] (vcra.config)."""
        site = module.site
        pair = group.pair_of.get(site.modality)
        if pair is None or module.group_keys[0] not in self.bank.groups:
            return None
        rows, sl, single = self.group_slots(gi, group, n)
        proj_out = site.out_features // 3 if site.proj == "qkv" else site.out_features
        if self._cache is not None:  # table routing: fold every group of the pair once, slice here
            cols, folded = self._folded(gi, group, n, pair, dtype)
            blocks = [folded[:, cols[key], :, :proj_out] for key in module.group_keys]  # (m, r, proj_out) each
        else:  # live routing (training): fold just this site's groups; autograd keeps (r, out) per site
            b_t = group.pairs[pair][1][:proj_out].t()
            scale = self._gather(self.bank.scale, sl)[:, None]
            blocks = [fold(self._gather(self.bank.lam_a, sl)[:, self.bank.groups[key], : group.rank], b_t,
                           scale * self._gather(self.bank.lam_b, sl)[:, self.bank.groups[key], :proj_out]).to(dtype)
                      for key in module.group_keys]
        if site.proj == "qkv":
            q, kv = blocks
            m = torch.cat([q, kv, kv], dim=-1)  # [q; k; v]: key and value share their vectors
        else:
            m = blocks[0]
        a = group.pairs[pair][0]
        return rows, a[:, : site.in_features].to(dtype), (m[0] if single else m)

    # -- called by the fusion-block hooks ----------------------------------------------------
    def fusion_block(self, index: int, num_blocks: int, hidden_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        from adapters.qasn import side_network_step

        self._check()
        return side_network_step(self, index, num_blocks, hidden_in, out)
