"""The routing object: which adapter each row of one call uses, and the tensors to do it.

A `Routing` is built by `AdapterTable.routing(names)` (serving: per-row slots into
the table's preallocated bank) or by `adapter.routing()` (training: one live
adapter, its own parameters as a one-slot bank, gradients flow). Both run the same
code below, called by the wrapped projections (`injection.AdaptedLinear`) and the
fusion-block hooks (QASN).

    slots            (B,) slot per request, 0 = frozen backbone (all-zero vectors);
                     None = every row uses slot 0 of a one-slot bank (live adapter)
    bank             VectorBank: per-slot Λa, Λb, s and QASN vectors, first axis = slot
    pair_groups      one per distinct shared pair among the requests: its (A, B)
                     tensors and which requests use it (None = all rows; rows whose
                     slot has zero vectors then get an exact zero delta)
    matrix_groups    LoRA adapters: their own (A, B) per site and their requests

Cost of one projection: 2 matmuls per pair group (one group for any number of VCRA
adapters with the same seed and rank and frozen pair) + 2 per matrix adapter
present. Rows multiply inside a call (beam search, candidate ranking); request
indices are expanded with the same consecutive layout as `routing.expand_rows`.

A routing made by a table is valid until the table next changes (checked per
projection); build one per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from adapters.errors import AdapterTableError
from adapters.routing import expand_rows
from adapters.vcra.layer import per_row, vcra_delta_


@dataclass
class VectorBank:
    lam_a: dict[str, torch.Tensor]  # group -> (S, R) (R >= every rank that reads it)
    lam_b: dict[str, torch.Tensor]  # group -> (S, d_out)
    scale: torch.Tensor  # (S,)
    qasn: dict[int, tuple[torch.Tensor, ...]] = field(default_factory=dict)  # block -> Λa (S,R), Λb, α, β (S,d)


@dataclass
class PairGroup:
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # pair -> (A (r, d_in), B (d_out, r))
    pair_of: dict[str, str]  # modality -> pair name
    rank: int
    requests: torch.Tensor | None  # (m,) request indices, None = all rows
    qasn_pair: str | None = None  # pair the fusion side network reads, None = no QASN in this group


@dataclass
class MatrixGroup:
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # site key -> (A (r, in), B (out, r))
    scaling: float
    requests: torch.Tensor | None


def site_key(site) -> str:
    return f"{site.modality}_{site.layer}_{site.proj}"


def _gather(t: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
    return t[:1] if slots is None else t.index_select(0, slots)


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
        self._rows: dict[tuple[int, int], torch.Tensor | None] = {}  # pure cache: (group id, n) -> rows
        # Table routings cache what they gather per (group, site, n): the bank cannot change under
        # them (guard) and holds no autograd history, and decoding calls each site once per token.
        # Live routings (training) gather afresh: their parameters change between steps.
        self._cache: dict | None = {} if guard is not None else None

    @property
    def batch_size(self) -> int | None:
        return None if self.slots is None else self.slots.shape[0]

    # -- row bookkeeping --------------------------------------------------------------
    def _check(self) -> None:
        if self._guard is not None and self._guard[0].generation != self._guard[1]:
            raise AdapterTableError("this routing is stale: the adapter table changed after routing() built it")

    def slots_for(self, n: int) -> torch.Tensor | None:
        return None if self.slots is None else expand_rows(self.slots, n)

    def rows_for(self, requests: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """Request indices (m,) -> row indices of an n-row batch (each request's k rows consecutive)."""
        if requests is None:
            return None
        key = (id(requests), n)
        if key not in self._rows:
            batch = self.slots.shape[0]
            if n % batch:
                raise ValueError(f"a batch of {n} rows cannot come from {batch} routed requests")
            k = n // batch
            self._rows[key] = (requests[:, None] * k + torch.arange(k, device=requests.device)).reshape(-1)
        return self._rows[key]

    # -- called by AdaptedLinear ---------------------------------------------------------
    def linear(self, module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        self._check()
        site, n = module.site, x.shape[0]
        for gi, group in enumerate(self.pair_groups):
            prepared = self._prepare(gi, group, module, n, x)
            if prepared is None:
                continue
            rows, a, b, vectors = prepared
            if rows is None:
                vcra_delta_(site, x, out, a, b, vectors)  # every row, in place
            else:
                part = vcra_delta_(site, x.index_select(0, rows), torch.zeros_like(out[: rows.shape[0]]), a, b, vectors)
                out = out.index_add_(0, rows, part)
        if self.matrix_groups:
            for group in self.matrix_groups:
                if module.site_key not in group.weights:
                    continue
                a, b = group.weights[module.site_key]
                rows = self.rows_for(group.requests, n)
                xs = x if rows is None else x.index_select(0, rows)
                delta = F.linear(F.linear(xs, a.to(x.dtype)), b.to(x.dtype)) * group.scaling  # (m, L, out)
                out = out.add_(delta) if rows is None else out.index_add_(0, rows, delta)
        return out

    def _prepare(self, gi: int, group: PairGroup, module, n: int, x: torch.Tensor):
        """(rows, A sliced, B sliced, [(Λa, s·Λb) per group key]) for one site, or None."""
        key = (gi, module.index, n, x.dim(), x.dtype)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        site, keys = module.site, module.group_keys
        pair = group.pair_of.get(site.modality)
        if pair is None or keys[0] not in self.bank.lam_a:
            prepared = None
        else:
            rows = self.rows_for(group.requests, n)
            slots = self.slots_for(n)
            sl = slots if rows is None or slots is None else slots.index_select(0, rows)
            scale = _gather(self.bank.scale, sl)[:, None]  # (m, 1)
            vectors = [(per_row(_gather(self.bank.lam_a[k][:, : group.rank], sl).to(x.dtype), x.dim()),
                        per_row((scale * _gather(self.bank.lam_b[k], sl)).to(x.dtype), x.dim())) for k in keys]
            a, b = group.pairs[pair]
            proj_out = site.out_features // 3 if site.proj == "qkv" else site.out_features
            prepared = (rows, a[:, : site.in_features].to(x.dtype), b[:proj_out].to(x.dtype), vectors)
        if self._cache is not None:
            self._cache[key] = prepared
        return prepared

    # -- called by the fusion-block hooks -----------------------------------------------------
    def fusion_block(self, index: int, num_blocks: int, hidden_in: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        from adapters.qasn import side_network_step

        self._check()
        return side_network_step(self, index, num_blocks, hidden_in, out)
