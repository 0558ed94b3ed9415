"""VeRA without cross-modal sharing: the paper's '+scaling vectors' ablation (Tables 8-9).

Same vectors, s and QASN as VCRA, but one (A, B) pair per modality (vision, text,
cross, decoder, decoder_cross) shared only across that modality's blocks, instead of
one pair for vision + text + cross. It is `VcraAdapter` with `share="modality"`,
stored and served as kind "vera" in the same vector bank; adapters with equal
(seed, rank) still share their pairs in a mixed batch (one pair group).
"""

from __future__ import annotations

from dataclasses import replace

from adapters.kinds.vcra.config import VcraConfig
from adapters.kinds.vcra.kind import VcraKind
from adapters.kinds.vcra.model import VcraAdapter


class VeraAdapter(VcraAdapter):
    kind = "vera"

    def __init__(self, config: VcraConfig, backbone):
        if config.share != "modality":
            config = replace(config, share="modality")
        super().__init__(config, backbone)


class VeraKind(VcraKind):
    name = "vera"
    share = "modality"
    adapter_class = VeraAdapter

    def reported_kind(self, options: dict) -> str:
        return self.name


__all__ = ["VeraAdapter", "VeraKind"]
