"""`AdapterTable`: a fixed-capacity, preallocated table of resident adapters, of any kind.

    table = AdapterTable(bb, capacity=64)                 # injects the wrappers once
    table.load("vqa-shapes", "adapters/vqa-shapes.safetensors")   # validate, then write a slot
    table.pin("vqa-shapes")                                # never LRU-evicted
    r = table.routing(["vqa-shapes", None, "caption-x"])   # one entry per request; None = frozen
    answers = tasks.vqa(bb, px, ids, mask, routing=r)

Storage. Each resident adapter has a slot index in 1..capacity (slot 0 = the frozen
backbone). Its kind (`adapters.kinds`) decides what the slot holds: kinds with a bank
(VCRA/VeRA vectors) write one row of a tensor preallocated at construction for every
slot, in place; kinds with their own weights (LoRA, VL-PET) keep their cast tensors
with the slot. Every bank row of a slot is zeroed before the slot is written, so a
bank routed over all rows gives other slots an exact zero delta. The backbone is
never touched after the one-time injection.

Batches. `routing(names)` groups the rows by what they run through (`kind.group_key`:
a bank, or one adapter) and asks each kind for its routing groups: VCRA adapters
sharing a pair cost one pair of matmuls however many there are; adapters with their
own weights are grouped per adapter.

Eviction. Names are kept in LRU order (a name is used when `routing` names it); when
every slot is taken, `load`/`insert` evict the least recently used unpinned adapter,
or raise `AdapterTableError` if all are pinned. `evict` removes a name even if pinned.

Concurrency. The table is NOT thread-safe: run every model call and every table
mutation on one worker thread (the server does). A routing is valid until the table
next changes; using a stale one raises `AdapterTableError`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from adapters.errors import AdapterTableError
from adapters.kinds import KINDS
from adapters.runtime.files import AdapterMeta, load_adapter, meta_of
from adapters.runtime.injection import inject
from adapters.runtime.routing import Routing


@dataclass
class _Slot:
    index: int
    meta: AdapterMeta
    kind: object  # the AdapterKind
    payload: object  # what kind.prepare returned
    pinned: bool = False


class AdapterTable:
    def __init__(self, backbone, capacity: int = 64, max_rank: int = 32):
        if capacity < 1 or max_rank < 1:
            raise ValueError("capacity and max_rank must be >= 1")
        self.backbone, self.capacity, self.max_rank = backbone, capacity, max_rank
        inject(backbone)  # once
        self.banks: dict[str, object] = {}  # bank key -> the bank its kinds share (preallocated)
        for kind in KINDS.values():
            if kind.servable and kind.bank_key and kind.bank_key not in self.banks:
                self.banks[kind.bank_key] = kind.new_bank(backbone, capacity, max_rank)
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # LRU order: oldest first
        self._free = list(range(capacity, 0, -1))  # pop() -> lowest free slot
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
        return [t for bank in self.banks.values() for t in bank.tensors()]

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
        kind = KINDS.get(adapter.kind)
        if kind is None or not kind.servable:
            servable = tuple(n for n, k in KINDS.items() if k.servable)
            raise AdapterTableError(f"kind {adapter.kind!r} cannot be served from the table (servable: {servable})")
        if adapter.backbone_fingerprint != self.backbone.fingerprint:
            raise AdapterTableError(f"adapter {name!r} was made for backbone {adapter.backbone_fingerprint}, "
                                    f"this one is {self.backbone.fingerprint}")
        meta = getattr(adapter, "meta", None) or meta_of(adapter)
        try:
            payload = kind.prepare(adapter, self)  # everything cast before the table changes
        except AdapterTableError as e:
            raise AdapterTableError(f"adapter {name!r}: {e}") from None
        index = self._release(name) if name in self._slots else self._take_slot()
        with torch.no_grad():
            for t in self._bank_tensors():
                t[index].zero_()
            kind.store(self, index, payload)
        self._slots[name] = _Slot(index, meta, kind, payload)
        self.generation += 1
        return meta

    def evict(self, name: str) -> None:
        self._free.append(self._release(name))
        self._free.sort(reverse=True)
        self.generation += 1

    def touch(self, names) -> None:
        """Mark the loaded ones of `names` used now (LRU) without routing them: a decode that
        spans several calls keeps its adapters ahead of the next eviction. No generation bump."""
        for n in names:
            if n in self._slots:
                self._slots.move_to_end(n)

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
        slot.kind.release(self, slot.index, slot.payload)
        return slot.index

    # -- routing -------------------------------------------------------------------------
    def routing(self, names: list[str | None]) -> Routing:
        """Per-request adapter names (None = frozen backbone) -> routing for adapters.tasks."""
        slots = [self._slot(n) if n is not None else None for n in names]
        for n in dict.fromkeys(n for n in names if n is not None):
            self._slots.move_to_end(n)  # LRU: used now
        index = torch.tensor([s.index if s else 0 for s in slots], dtype=torch.long, device=self.backbone.device)
        together: dict[object, tuple[object, dict[int, tuple[object, list[int]]]]] = {}
        for row, s in enumerate(slots):
            if s is not None:
                _, members = together.setdefault(s.kind.group_key(s.payload, s.index), (s.kind, {}))
                members.setdefault(s.index, (s.payload, []))[1].append(row)
        groups = []
        for kind, members in together.values():
            groups += kind.route(self, [(p, i, rows) for i, (p, rows) in members.items()], len(names))
        return Routing(index, groups, guard=(self, self.generation))
