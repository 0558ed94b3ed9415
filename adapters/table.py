"""`AdapterTable`: a fixed-capacity, preallocated table of resident adapters.

    table = AdapterTable(bb, capacity=64)                 # injects the wrappers once
    table.load("vqa-shapes", "adapters/vqa-shapes.safetensors")   # validate, then write a slot
    table.pin("vqa-shapes")                                # never LRU-evicted
    r = table.routing(["vqa-shapes", None, "caption-x"])   # one entry per request; None = frozen
    answers = tasks.vqa(bb, px, ids, mask, routing=r)

Storage. Every VCRA/VeRA vector lives in a bank preallocated at construction: for
each vector group of the backbone, Λa (capacity+1, max_rank) and Λb (capacity+1,
d_out), plus s (capacity+1,) and the QASN vectors. Slot 0 is all zeros and never
written: it is the frozen backbone (a zero delta is added, exactly). Inserting
writes one slot row in place; nothing is reallocated, and the backbone is never
touched after the one-time injection. Shared (A, B) pairs are drawn once per
(kind, seed, rank) and refcounted; adapters with their own matrices (LoRA, VCRA with
trained A, B) keep their tensors with their slot and are grouped per adapter in a batch.

Eviction. Names are kept in LRU order (a name is used when `routing` names it);
when every slot is taken, `load`/`insert` evict the least recently used unpinned
adapter, or raise `AdapterTableError` if all are pinned. `evict` removes a name
even if pinned.

Concurrency. The table is NOT thread-safe: run every model call and every table
mutation on one worker thread (the server does). A routing is valid until the table
next changes; using a stale one raises `AdapterTableError`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from adapters.errors import AdapterTableError
from adapters.files import AdapterMeta, load_adapter
from adapters.injection import injected_sites
from adapters.kinds import SERVABLE_KINDS, adapter_options
from adapters.mixed import MatrixGroup, PairGroup, Routing, VectorBank
from adapters.sites import MODALITIES
from adapters.vcra.config import group_keys, proj_out


@dataclass
class _Slot:
    index: int
    meta: AdapterMeta
    pinned: bool = False
    pair_key: tuple | None = None  # key into table._pairs (vector kinds)
    pair_map: dict = field(default_factory=dict)  # modality -> pair name
    qasn_pair: str | None = None
    lora: dict | None = None  # site key -> (A, B)
    scaling: float = 1.0


class AdapterTable:
    def __init__(self, backbone, capacity: int = 64, max_rank: int = 32):
        if capacity < 1 or max_rank < 1:
            raise ValueError("capacity and max_rank must be >= 1")
        self.backbone, self.capacity, self.max_rank = backbone, capacity, max_rank
        sites = injected_sites(backbone)  # injects once
        kw = dict(device=backbone.device, dtype=backbone.dtype)
        rows = capacity + 1  # slot 0 = frozen
        groups: dict[str, int] = {}
        for site in sites:
            for key in group_keys(site):
                groups[key] = proj_out(site)
        blocks = len(backbone.text_encoder.encoder.layer) if backbone.text_encoder is not None else 0
        d = backbone.config.text_config.hidden_size
        self.bank = VectorBank(
            groups={k: g for g, k in enumerate(groups)},
            lam_a=torch.zeros(rows, len(groups), max_rank, **kw),
            lam_b=torch.zeros(rows, len(groups), max(groups.values()), **kw),
            scale=torch.zeros(rows, **kw),
            qasn=(torch.zeros(rows, blocks, max_rank, **kw), torch.zeros(rows, blocks, d, **kw),
                  torch.zeros(rows, blocks, d, **kw), torch.zeros(rows, blocks, d, **kw)) if blocks else None,
        )
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # LRU order: oldest first
        self._free = list(range(capacity, 0, -1))  # pop() -> lowest free slot
        self._pairs: dict[tuple, list] = {}  # pair key -> [pairs dict, refcount, rank]
        self.generation = 0  # bumped by every mutation; routings check it

    # -- queries -------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def names(self) -> list[str]:
        return list(self._slots)

    def meta(self, name: str) -> AdapterMeta:
        return self._slot(name).meta

    def pinned(self, name: str) -> bool:
        return self._slot(name).pinned

    @property
    def slot_nbytes(self) -> int:
        """Bank bytes one slot takes (whatever the adapter's size)."""
        return sum(t[0].numel() * t.element_size() for t in self._bank_tensors())

    def _bank_tensors(self) -> list[torch.Tensor]:
        return [self.bank.lam_a, self.bank.lam_b, self.bank.scale, *(self.bank.qasn or ())]

    def _slot(self, name: str) -> _Slot:
        if name not in self._slots:
            raise AdapterTableError(f"no adapter named {name!r} is loaded")
        return self._slots[name]

    # -- mutations -------------------------------------------------------------------------
    def load(self, name: str, path) -> AdapterMeta:
        """Validate the file, then insert. On any error the table is left as it was."""
        return self.insert(name, load_adapter(path, self.backbone))

    def insert(self, name: str, adapter) -> AdapterMeta:
        """Copy `adapter` into a slot (replacing `name` if present, else a free or LRU slot)."""
        if not isinstance(name, str) or not name:
            raise AdapterTableError(f"adapter names are non-empty strings, got {name!r}")
        if adapter.kind not in SERVABLE_KINDS:
            raise AdapterTableError(f"kind {adapter.kind!r} cannot be served from the table (servable: {SERVABLE_KINDS})")
        if adapter.backbone_fingerprint != self.backbone.fingerprint:
            raise AdapterTableError(f"adapter {name!r} was made for backbone {adapter.backbone_fingerprint}, "
                                    f"this one is {self.backbone.fingerprint}")
        if adapter.kind != "lora" and adapter.rank > self.max_rank:
            raise AdapterTableError(f"adapter {name!r} has rank {adapter.rank} > the table's max_rank {self.max_rank}")
        meta = getattr(adapter, "meta", None) or _meta_of(adapter)
        kw = dict(device=self.backbone.device, dtype=self.backbone.dtype)
        with torch.no_grad():  # everything cast before the table changes
            slot = _Slot(index=-1, meta=meta)
            if adapter.kind == "lora":
                slot.lora = {k: (a.detach().to(**kw), b.detach().to(**kw)) for k, (a, b) in adapter.weights().items()}
                slot.scaling = adapter.config.scaling
                writes = {}
            else:
                slot.pair_key = adapter.pair_key()
                slot.pair_map = adapter.pair_of()
                slot.qasn_pair = adapter.config.pair_of("cross") if adapter.config.qasn else None
                pairs = {n: (a.detach().to(**kw), b.detach().to(**kw)) for n, (a, b) in adapter.pair.pairs().items()}
                unknown = [k for k in adapter.lam_a if k not in self.bank.groups]
                blocks = 0 if self.bank.qasn is None else self.bank.qasn[0].shape[1]
                if unknown or len(adapter.qasn_lam_a) > blocks:
                    raise AdapterTableError(f"adapter {name!r} has vector groups this backbone lacks: {unknown[:3]}")
                writes = _vector_writes(adapter, self.bank, kw)
        if name in self._slots:
            slot.index = self._release(name)
        else:
            slot.index = self._take_slot()
        if slot.pair_key is None and slot.lora is None:
            slot.pair_key = ("slot", slot.index)  # own trained pair: a group of its own
        if slot.lora is None:
            entry = self._pairs.setdefault(slot.pair_key, [{}, 0, adapter.rank])
            for n, pair in pairs.items():
                entry[0].setdefault(n, pair)
            entry[1] += 1
        self._write_slot(slot.index, writes)
        self._slots[name] = slot
        self.generation += 1
        return meta

    def evict(self, name: str) -> None:
        self._free.append(self._release(name))
        self._free.sort(reverse=True)
        self.generation += 1

    def pin(self, name: str, pinned: bool = True) -> None:
        self._slot(name).pinned = bool(pinned)

    def _take_slot(self) -> int:
        if self._free:
            return self._free.pop()
        victim = next((n for n, s in self._slots.items() if not s.pinned), None)
        if victim is None:
            raise AdapterTableError(f"the adapter table is full ({self.capacity} slots) and every adapter is pinned")
        return self._release(victim)

    def _release(self, name: str) -> int:
        slot = self._slots.pop(name, None)
        if slot is None:
            raise AdapterTableError(f"no adapter named {name!r} is loaded")
        if slot.pair_key is not None and slot.lora is None:
            entry = self._pairs[slot.pair_key]
            entry[1] -= 1
            if entry[1] == 0:
                del self._pairs[slot.pair_key]
        return slot.index

    def _write_slot(self, index: int, writes: dict) -> None:
        """Zero slot `index` everywhere, then write the adapter's vectors (in place)."""
        bank = self.bank
        for t in self._bank_tensors():
            t[index].zero_()
        if not writes:
            return
        cols, lam_a, lam_b = writes["cols"], writes["lam_a"], writes["lam_b"]
        bank.lam_a[index, :, : lam_a.shape[1]].index_copy_(0, cols, lam_a)  # (Gk, r) into (G, R)
        bank.lam_b[index, :, : lam_b.shape[1]].index_copy_(0, cols, lam_b)  # (Gk, Dk) into (G, D)
        bank.scale[index] = writes["scale"]
        for part, value in enumerate(writes["qasn"]):  # (N, r | d) into (N, R | d)
            bank.qasn[part][index, :, : value.shape[1]] = value

    # -- routing -------------------------------------------------------------------------
    def routing(self, names: list[str | None]) -> Routing:
        """Per-request adapter names (None = frozen backbone) -> routing for adapters.tasks."""
        slots = [self._slot(n) if n is not None else None for n in names]
        for n in dict.fromkeys(n for n in names if n is not None):
            self._slots.move_to_end(n)  # LRU: used now
        device = self.backbone.device
        index = torch.tensor([s.index if s else 0 for s in slots], dtype=torch.long, device=device)
        by_pair: dict[tuple, list[int]] = {}
        by_lora: dict[int, list[int]] = {}
        for i, s in enumerate(slots):
            if s is not None:
                (by_lora.setdefault(s.index, []) if s.lora is not None else by_pair.setdefault(s.pair_key, [])).append(i)
        pair_groups = []
        for key, rows in by_pair.items():
            pairs, _, rank = self._pairs[key]
            kind = slots[rows[0]].meta.kind  # a pair key holds one kind
            qasn = next((slots[i].qasn_pair for i in rows if slots[i].qasn_pair), None)
            pair_map = {m: _pair_name(kind, m) for m in MODALITIES if _pair_name(kind, m) in pairs}
            # a single pair group runs over every row: the others hold zero vectors -> exact zero delta
            requests = None if len(by_pair) == 1 else torch.tensor(rows, device=device)
            pair_groups.append(PairGroup(pairs, pair_map, rank, requests, qasn))
        matrix_groups = []
        for rows in by_lora.values():
            slot = slots[rows[0]]
            requests = None if len(rows) == len(names) else torch.tensor(rows, device=device)
            matrix_groups.append(MatrixGroup(slot.lora, slot.scaling, requests))
        return Routing(index, self.bank, pair_groups, matrix_groups, guard=(self, self.generation))


def _pair_name(kind: str, modality: str) -> str:
    """Pair a modality reads under the kind's sharing scheme (vcra: enc/dec, vera: per modality)."""
    if kind == "vera":
        return modality
    return "dec" if modality.startswith("decoder") else "enc"


def _vector_writes(adapter, bank: VectorBank, kw: dict) -> dict:
    """The adapter's vectors stacked for a few in-place copies: group columns, Λa (Gk, r),
    Λb (Gk, Dk) zero padded, s, and the QASN stacks (N, r | d)."""
    from adapters.vcra.model import _stack_padded

    keys = list(adapter.lam_a)
    stores = (adapter.qasn_lam_a, adapter.qasn_lam_b, adapter.qasn_alpha, adapter.qasn_beta)
    return {
        "cols": torch.tensor([bank.groups[k] for k in keys], device=kw["device"]),
        "lam_a": torch.stack([adapter.lam_a[k].detach() for k in keys]).to(**kw),
        "lam_b": _stack_padded([adapter.lam_b[k].detach() for k in keys]).to(**kw),
        "scale": adapter.scale.detach().to(**kw),
        "qasn": [torch.stack([p.detach() for p in store.values()]).to(**kw) for store in stores] if len(stores[0]) else [],
    }


def _meta_of(adapter) -> AdapterMeta:
    from adapters.files import FORMAT_VERSION

    nbytes = sum(t.numel() * 4 for t in adapter.state_dict().values())
    return AdapterMeta(kind=adapter.kind, task=adapter.task, rank=adapter.rank, seed=adapter.seed,
                       train_ab=bool(getattr(adapter.config, "train_ab", True)), targets=tuple(adapter.config.targets),
                       options=adapter_options(adapter), trainable_params=adapter.trainable_count(), nbytes=nbytes,
                       backbone_fingerprint=adapter.backbone_fingerprint, format_version=FORMAT_VERSION)
