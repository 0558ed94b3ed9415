"""The adapter kinds, one folder each, and the registry shared code looks them up in.

Adding a kind: write `adapters/kinds/<kind>/` (config, layer, model: an `AdapterKind`
subclass, see `base.py`) and add one line below. Nothing else names a kind.
"""

from __future__ import annotations

from adapters.kinds.base import AdapterKind
from adapters.kinds.full.model import FullKind
from adapters.kinds.lora.model import LoraKind
from adapters.kinds.vcra.kind import VcraKind, VcraQasnKind
from adapters.kinds.vera import VeraKind
from adapters.kinds.vl_pet.model import KINDS as VL_PET_KINDS

KINDS: dict[str, AdapterKind] = {
    "vcra": VcraKind(),
    "vcra-qasn": VcraQasnKind(),
    "vera": VeraKind(),
    "lora": LoraKind(),
    "full": FullKind(),
    **VL_PET_KINDS,  # vl-pet-large, vl-pet-middle-x, vl-pet-middle-y, vl-pet-small
}


def get_kind(name: str) -> AdapterKind:
    if name not in KINDS:
        raise ValueError(f"unknown adapter kind {name!r}; kinds are {tuple(KINDS)}")
    return KINDS[name]


def servable_kinds() -> tuple[str, ...]:
    return tuple(name for name, kind in KINDS.items() if kind.servable)
