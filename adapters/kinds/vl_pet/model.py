"""`VlPetAdapter`: one task's VL-PET modules as a trainable nn.Module, and its four kinds.

Tensors (state-dict and file names; key = "{vision|text}_{layer}_{attn|cross|ffn}" for
encoder branches, "decoder_cross_{layer}_v" for decoder values):

    down.{key} (r, d), down_b.{key} (r)          random (nn.Linear init, seeded)
    up.{key} (d, r), up_b.{key} (d)              0 -> Δ = 0 at init
    large:     gate_down.{key} (g, d), gate_down_b (g) random; gate_up.{key} (d, g), gate_up_b (d) 0
    middle-x:  gate_w.{key} (d), gate_b.{key} (1)    0
    small:     gate_w.{key} (2d), gate_b.{key} (1)   0
    middle-y:  gate.{key} (d)                        0
    vdown.{key} (r, d_in), vdown_b (r) random; vup.{key} (d_out, r), vup_b (d_out) 0

At init every G is exactly 1 (2σ(0) = 1, 1 + 0 = 1) and every Δ exactly 0, so the
adapted model equals the frozen one bit for bit. The authors start G at σ(·) ≈ 0.5
(halving each encoder branch until trained) and middle-y at 1 + N(0, 0.02²); our 2σ
keeps their bounded sigmoid gate (range (0, 2): it can damp or amplify a branch) while
starting from the frozen model, as every kind here does.
"""

from __future__ import annotations

import torch
from torch import nn

from adapters.kinds.base import AdapterKind, ConfigIdentity
from adapters.kinds.vl_pet.config import DECODER_PARTS, VlPetConfig, sublayer_part
from adapters.kinds.vl_pet.layer import VlPetGroup, init_down
from adapters.runtime.injection import injected_sites, injected_sublayers
from adapters.runtime.routing import Routing
from adapters.runtime.sites import site_key

_TENSORS = ("down", "down_b", "up", "up_b", "gate_down", "gate_down_b", "gate_up", "gate_up_b", "gate_w", "gate_b",
            "gate", "vdown", "vdown_b", "vup", "vup_b")


class VlPetAdapter(ConfigIdentity, nn.Module):
    def __init__(self, config: VlPetConfig, backbone):
        super().__init__()
        self.config = config
        for name in _TENSORS:
            setattr(self, name, nn.ParameterDict())
        dev = backbone.device
        zeros = lambda *shape: nn.Parameter(torch.zeros(*shape, device=dev))  # noqa: E731
        r, g = config.rank, config.gate_rank
        subs = [s for s in injected_sublayers(backbone) if sublayer_part(s) in config.targets]
        for sub in subs:
            k, d = sub.key, sub.width
            w, b = init_down(config.seed, k, r, d)
            self.down[k], self.down_b[k] = nn.Parameter(w.to(dev)), nn.Parameter(b.to(dev))
            self.up[k], self.up_b[k] = zeros(d, r), zeros(d)
            if config.granularity == "large":
                w, b = init_down(config.seed, "gate:" + k, g, d)
                self.gate_down[k], self.gate_down_b[k] = nn.Parameter(w.to(dev)), nn.Parameter(b.to(dev))
                self.gate_up[k], self.gate_up_b[k] = zeros(d, g), zeros(d)
            elif config.granularity in ("middle-x", "small"):
                self.gate_w[k] = zeros(d if config.granularity == "middle-x" else 2 * d)
                self.gate_b[k] = zeros(1)
            else:
                self.gate[k] = zeros(d)
        values = [s for s in injected_sites(backbone)
                  if s.modality in config.targets and s.modality in DECODER_PARTS and s.proj == "v"]
        for site in values:
            k = site_key(site)
            w, b = init_down(config.seed, k, r, site.in_features)
            self.vdown[k], self.vdown_b[k] = nn.Parameter(w.to(dev)), nn.Parameter(b.to(dev))
            self.vup[k], self.vup_b[k] = zeros(site.out_features, r), zeros(site.out_features)
        present = {sublayer_part(s) for s in subs} | {s.modality for s in values}
        missing = [t for t in config.targets if t not in present]
        if missing:
            raise ValueError(f"targets {missing} are not in this backbone")

    @property
    def kind(self) -> str:
        return f"vl-pet-{self.config.granularity}"

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def routing(self) -> Routing:
        """Every row of the call through this adapter's live parameters (gradients flow)."""
        return Routing(None, [VlPetGroup(dict(self.named_parameters()), self.config.granularity,
                                         self.config.targets, None)])

    def extra_repr(self) -> str:
        c = self.config
        return (f"granularity={c.granularity}, task={c.task}, rank={c.rank}, gate_rank={c.gate_rank}, "
                f"targets={c.targets}, trainable={self.trainable_count()}")


class VlPetKind(AdapterKind):
    """One granularity: own weights per adapter (no bank), one routing group per adapter."""

    def __init__(self, granularity: str):
        self.granularity = granularity
        self.name = f"vl-pet-{granularity}"

    def create(self, backbone, *, task, rank, seed, train_ab=True, **options):
        return VlPetAdapter(VlPetConfig(task=task, granularity=self.granularity, rank=rank, seed=seed, **options),
                            backbone)  # every tensor trains; train_ab has no meaning here

    def touches_vision(self, meta) -> bool:
        """Gates on both residual branches of every ViT layer iff "vision" is a target part."""
        return "vision" in meta.targets

    def prepare(self, adapter, table) -> dict:
        return {"params": super().prepare(adapter, table), "targets": adapter.config.targets}

    def group(self, payload: dict, requests):
        return VlPetGroup(payload["params"], self.granularity, payload["targets"], requests)


KINDS = {f"vl-pet-{g}": VlPetKind(g) for g in ("large", "middle-x", "middle-y", "small")}
