"""`LoraAdapter`: the LoRA baseline with the same interface as `VcraAdapter`.

Tensors (state-dict and file names): A.{site} (r, in), B.{site} (out, r), site =
"{modality}_{layer}_{q|k|v|qkv}". All of them train and all are stored.
"""

from __future__ import annotations

from torch import nn

from adapters.identity import ConfigIdentity
from adapters.injection import injected_sites
from adapters.lora.config import LoraConfig
from adapters.lora.layer import init_pair
from adapters.mixed import MatrixGroup, Routing, site_key


class LoraAdapter(ConfigIdentity, nn.Module):
    kind = "lora"

    def __init__(self, config: LoraConfig, backbone):
        super().__init__()
        self.config = config
        sites = [s for s in injected_sites(backbone) if s.modality in config.targets]
        missing = [m for m in config.targets if not any(s.modality == m for s in sites)]
        if missing:
            raise ValueError(f"targets {missing} are not in this backbone")
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for site in sites:
            key = site_key(site)
            a, b = init_pair(config.seed, key, config.rank, site.in_features, site.out_features)
            self.A[key] = nn.Parameter(a.to(backbone.device))
            self.B[key] = nn.Parameter(b.to(backbone.device))

    def pair_key(self) -> None:
        return None  # own matrices: grouped per adapter

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def weights(self) -> dict:
        return {k: (self.A[k], self.B[k]) for k in self.A}

    def routing(self) -> Routing:
        return Routing(None, None, [], [MatrixGroup(self.weights(), self.config.scaling, None)])

    def extra_repr(self) -> str:
        c = self.config
        return f"task={c.task}, rank={c.rank}, alpha={c.alpha}, targets={c.targets}, trainable={self.trainable_count()}"
