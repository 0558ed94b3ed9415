"""VCRA as a registered kind: creating adapters, their header options, and their table
slots (one row of a preallocated `bank.VectorBank`, shared by VeRA).

Slots. Every slot's Λa (G, R), Λb (G, D), s and QASN vectors are one row of the bank,
written in place on insert (no allocation); slot 0 and the slots of other kinds stay
zero in it. Shared (A, B) pairs are drawn once per pair key (kind, share, seed, rank)
and refcounted; an adapter with its own trained pair keeps it with its slot (a pair
key of its own) and forms its own pair group in a batch.

Temporal module (`temporal.py`, option `temporal`): its codes and motion vectors are one
more row of the bank, (K, Hv) and (2, Hv) per slot, zero for slots without it.

Reported kind. A VCRA adapter with QASN reports "vcra-qasn", one without "vcra"
(files written before the kind said so carry kind "vcra" and qasn in their options:
they load and report the same).
"""

from __future__ import annotations

import torch

from adapters.errors import AdapterTableError
from adapters.kinds.base import AdapterKind
from adapters.kinds.vcra.bank import PairGroup, VectorBank, VectorRouting
from adapters.kinds.vcra.config import VcraConfig, group_keys, proj_out
from adapters.kinds.vcra.layer import fold
from adapters.kinds.vcra.model import VcraAdapter, stack_padded
from adapters.kinds.vcra.temporal import TEMPORAL_KNOTS
from adapters.runtime.injection import injected_sites
from adapters.runtime.sites import MODALITIES, site_key


class VcraKind(AdapterKind):
    name = "vcra"
    bank_key = "vectors"
    share = "cross_modal"
    adapter_class = VcraAdapter
    qasn_default: bool | None = None  # None: on iff the task runs the fusion encoder

    def create(self, backbone, *, task, rank, seed, train_ab=False, **options):
        options.setdefault("qasn", self.qasn_default)
        if options.pop("share", self.share) != self.share:
            raise ValueError(f"kind {self.name!r} shares its pairs as {self.share!r}; use another kind")
        config = VcraConfig(task=task, rank=rank, seed=seed, train_ab=train_ab, share=self.share, **options)
        return self.adapter_class(config, backbone)

    def header_options(self, adapter) -> dict:
        options = super().header_options(adapter)
        options.pop("share", None)  # implied by the kind
        return options

    def reported_kind(self, options: dict) -> str:
        return "vcra-qasn" if options.get("qasn") else "vcra"

    def touches_vision(self, meta) -> bool:
        """Vectors (Λa, Λb, s) on the ViT's fused qkv iff "vision" is a target; the shared
        pair alone changes nothing (Λb scales it). QASN runs beside the fusion encoder:
        it reads image tokens but never changes them.

        The temporal module does not count either: it acts on the frame tokens the ViT
        returned, inside `tasks.fuse` / `tasks.image_features` under the batch's routing.
        Shared: the ViT pass itself (one per video for every adapter leaving the tower
        frozen, temporal or not; server/image_features.py). Not shared: everything from the
        temporal module on, which each row runs with its own codes."""
        return "vision" in meta.targets

    # -- table slots --------------------------------------------------------------------------
    def new_bank(self, backbone, capacity: int, max_rank: int) -> VectorBank:
        kw = dict(device=backbone.device, dtype=backbone.dtype)
        rows = capacity + 1  # slot 0 = frozen
        widths: dict[str, int] = {}
        for site in injected_sites(backbone):
            for key in group_keys(site):
                widths[key] = proj_out(site)
        blocks = len(backbone.text_encoder.encoder.layer) if backbone.text_encoder is not None else 0
        d = backbone.config.text_config.hidden_size
        hv = backbone.config.vision_config.hidden_size
        return VectorBank(
            groups={k: g for g, k in enumerate(widths)},
            lam_a=torch.zeros(rows, len(widths), max_rank, **kw),
            lam_b=torch.zeros(rows, len(widths), max(widths.values()), **kw),
            scale=torch.zeros(rows, **kw),
            qasn=tuple(torch.zeros(rows, blocks, w, **kw) for w in (max_rank, d, d, d)) if blocks else None,
            temporal=(torch.zeros(rows, TEMPORAL_KNOTS, hv, **kw), torch.zeros(rows, 2, hv, **kw)),
        )

    def prepare(self, adapter, table) -> dict:
        self.check_rank(adapter, table, adapter.kind)
        bank = table.banks[self.bank_key]
        kw = dict(device=table.backbone.device, dtype=table.backbone.dtype)
        unknown = [k for k in adapter.lam_a if k not in bank.groups]
        blocks = 0 if bank.qasn is None else bank.qasn[0].shape[1]
        if unknown or len(adapter.qasn_lam_a) > blocks:
            raise AdapterTableError(f"a {adapter.kind} adapter has vector groups this backbone lacks: {unknown[:3]}")
        with torch.no_grad():
            keys = list(adapter.lam_a)
            stores = (adapter.qasn_lam_a, adapter.qasn_lam_b, adapter.qasn_alpha, adapter.qasn_beta)
            return {
                "pair_key": adapter.pair_key(),  # None: own trained pair
                "pair_of": {m: adapter.config.pair_of(m) for m in MODALITIES},
                "qasn_pair": adapter.config.pair_of("cross") if adapter.config.qasn else None,
                "rank": adapter.rank,
                "pairs": {n: (a.detach().to(**kw), b.detach().to(**kw)) for n, (a, b) in adapter.pair.pairs().items()},
                "cols": torch.tensor([bank.groups[k] for k in keys], device=kw["device"]),
                "lam_a": torch.stack([adapter.lam_a[k].detach() for k in keys]).to(**kw),  # (Gk, r)
                "lam_b": stack_padded([adapter.lam_b[k].detach() for k in keys]).to(**kw),  # (Gk, Dk)
                "scale": adapter.scale.detach().to(**kw),
                "qasn": [torch.stack([p.detach() for p in st.values()]).to(**kw) for st in stores] if len(stores[0]) else [],
                "temporal": (adapter.temporal_code.detach().to(**kw), adapter.temporal_motion.detach().to(**kw))
                if adapter.config.temporal else None,
            }

    def store(self, table, index: int, payload: dict) -> None:
        bank = table.banks[self.bank_key]
        cols, lam_a, lam_b = payload["cols"], payload["lam_a"], payload["lam_b"]
        bank.lam_a[index, :, : lam_a.shape[1]].index_copy_(0, cols, lam_a)  # (Gk, r) into (G, R)
        bank.lam_b[index, :, : lam_b.shape[1]].index_copy_(0, cols, lam_b)  # (Gk, Dk) into (G, D)
        bank.scale[index] = payload["scale"]
        for part, value in enumerate(payload["qasn"]):  # (N, r | d) into (N, R | d)
            bank.qasn[part][index, :, : value.shape[1]] = value
        if payload["temporal"] is not None:  # (K, Hv), (2, Hv)
            for part, value in enumerate(payload["temporal"]):
                bank.temporal[part][index] = value
        entry = bank.pairs.setdefault(self._pair_key(payload, index), [{}, 0, payload["rank"]])
        for n, pair in payload["pairs"].items():
            entry[0].setdefault(n, pair)
        entry[1] += 1

    def release(self, table, index: int, payload: dict) -> None:
        bank = table.banks[self.bank_key]
        key = self._pair_key(payload, index)
        bank.pairs[key][1] -= 1
        if bank.pairs[key][1] == 0:
            del bank.pairs[key]

    @staticmethod
    def _pair_key(payload: dict, index: int) -> tuple:
        return payload["pair_key"] or ("slot", index)  # own trained pair: a group of its own

    def route(self, table, members: list, batch: int) -> list:
        """All VCRA/VeRA members of a call -> one VectorRouting with a pair group per pair key."""
        bank = table.banks[self.bank_key]
        by_pair: dict[tuple, list] = {}
        for payload, index, rows in members:
            by_pair.setdefault(self._pair_key(payload, index), []).append((payload, rows))
        device = table.backbone.device
        temporal = any(p["temporal"] is not None for p, _, _ in members)
        groups = []
        for key, entries in by_pair.items():
            pairs, _, rank = bank.pairs[key]
            pair_of = {m: p for m, p in entries[0][0]["pair_of"].items() if p in pairs}
            qasn = next((p["qasn_pair"] for p, _ in entries if p["qasn_pair"]), None)
            rows = sorted(r for _, rs in entries for r in rs)
            # a single pair group runs over every row: the others hold zero vectors -> exact zero delta
            requests = None if len(by_pair) == 1 else torch.tensor(rows, dtype=torch.long, device=device)
            groups.append(PairGroup(pairs, pair_of, rank, requests, qasn))
        return [VectorRouting(bank, groups, temporal=temporal)]

    def group_key(self, payload, slot: int):
        return self.bank_key

    # -- interop ----------------------------------------------------------------------------------
    def lora_factors(self, adapter, backbone) -> dict:
        """delta(x) = (x Aᵀ) M with M = diag(Λa) Bᵀ diag(s·Λb) (r, out): LoRA A = A[:, :in],
        LoRA B = Mᵀ, rank r. The fused vision qkv takes [M_q | M_kv | M_kv]. QASN is a side
        network, not a delta on a projection: an adapter with it has no LoRA form."""
        if adapter.config.qasn:
            raise ValueError(f"this {adapter.kind} adapter has QASN, a side network with no LoRA form; "
                             "export a VCRA trained without QASN (kind 'vcra')")
        if adapter.config.temporal:
            raise ValueError(f"this {adapter.kind} adapter has the temporal module, which acts on video frame "
                             "tokens, not on a projection: it has no LoRA form")
        pairs, s = adapter.pair.pairs(), adapter.scale.detach()
        out = {}
        for site in injected_sites(backbone):
            keys = group_keys(site)
            if keys[0] not in adapter.lam_a:
                continue
            a, b = pairs[adapter.config.pair_of(site.modality)]
            width = proj_out(site)
            ms = [fold(adapter.lam_a[k].detach()[None], b[:width].detach().t(), s * adapter.lam_b[k].detach()[None])[0]
                  for k in keys]  # (r, width) each
            m = torch.cat([ms[0], ms[1], ms[1]], dim=-1) if site.proj == "qkv" else ms[0]
            out[site_key(site)] = (a[:, : site.in_features].detach().clone(), m.t().contiguous())
        return out


class VcraQasnKind(VcraKind):
    """`vcra-qasn`: VCRA with QASN wherever the task runs the fusion encoder (vqa, retrieve).
    Same tensors, slots and forward as "vcra"; only the default of `qasn` differs."""

    name = "vcra-qasn"
    qasn_default = None

    def create(self, backbone, *, task, rank, seed, train_ab=False, **options):
        if options.get("qasn") is False:
            raise ValueError("kind 'vcra-qasn' has QASN; use kind 'vcra' for VCRA without it")
        return super().create(backbone, task=task, rank=rank, seed=seed, train_ab=train_ab, **options)
