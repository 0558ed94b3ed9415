"""`LoraAdapter`: the LoRA baseline with the same interface as `VcraAdapter`, and its kind.

Tensors (state-dict and file names): A.{site} (r, in), B.{site} (out, r), site =
"{modality}_{layer}_{q|k|v|qkv}". All of them train and all are stored; a table slot
keeps them (no bank), and each LoRA adapter in a batch is one group over its rows.
"""

from __future__ import annotations

from torch import nn

from adapters.kinds.base import AdapterKind, ConfigIdentity
from adapters.kinds.lora.config import LoraConfig
from adapters.kinds.lora.layer import MatrixGroup, init_pair
from adapters.runtime.injection import injected_sites
from adapters.runtime.routing import Routing
from adapters.runtime.sites import site_key


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

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def weights(self) -> dict:
        return {k: (self.A[k], self.B[k]) for k in self.A}

    def routing(self) -> Routing:
        return Routing(None, [MatrixGroup(self.weights(), self.config.scaling, None)])

    def extra_repr(self) -> str:
        c = self.config
        return f"task={c.task}, rank={c.rank}, alpha={c.alpha}, targets={c.targets}, trainable={self.trainable_count()}"


class LoraKind(AdapterKind):
    name = "lora"

    def create(self, backbone, *, task, rank, seed, train_ab=True, **options):
        return LoraAdapter(LoraConfig(task=task, rank=rank, seed=seed, **options), backbone)  # A, B always train

    def touches_vision(self, meta) -> bool:
        """(A, B) on the ViT's fused qkv iff "vision" is a target."""
        return "vision" in meta.targets

    def prepare(self, adapter, table) -> dict:
        weights = super().prepare(adapter, table)  # {"A.key": (r, in), "B.key": (out, r)}
        keys = [k[2:] for k in weights if k.startswith("A.")]
        return {"weights": {k: (weights[f"A.{k}"], weights[f"B.{k}"]) for k in keys}, "scaling": adapter.config.scaling}

    def group(self, payload: dict, requests):
        return MatrixGroup(payload["weights"], payload["scaling"], requests)

    def lora_factors(self, adapter, backbone) -> dict:
        """Its own (A, B), with alpha / r folded into B (exported at scaling 1)."""
        return {k: (a.detach().clone(), b.detach() * adapter.config.scaling) for k, (a, b) in adapter.weights().items()}
