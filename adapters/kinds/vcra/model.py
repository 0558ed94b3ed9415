"""`VcraAdapter`: one task's VCRA (+ QASN) parameters, as a trainable nn.Module.

    adapter = VcraAdapter(VcraConfig(task="vqa", rank=8, seed=0), bb)
    with routed(adapter.routing()): loss = ...          # backbone + this adapter, with grads
    adapter.parameters()   -> Λa, Λb per group, s, QASN vectors (+ A, B if train_ab)

Tensors (state-dict names, which are also the adapter file's tensor names):
    lam_a.{group}  (r)       init 1      group = "{modality}_{layer}_{q|kv}"
    lam_b.{group}  (d_out)   init 0      -> the adapter starts as the frozen backbone
    scale          ()        init s0     the learnable scalar s
    qasn_lam_a.{i} (r), qasn_lam_b.{i} (d), qasn_alpha.{i} (d) init 1, qasn_beta.{i} (d) init 0
    pair.A_{p} (r, d_in), pair.B_{p} (d_out, r)    only if train_ab (else regenerated from seed)
    temporal_code (K, Hv) init 0, temporal_motion (2, Hv) init 0   only if temporal (temporal.py)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adapters.kinds.base import ConfigIdentity
from adapters.kinds.vcra.bank import PairGroup, VectorBank, VectorRouting
from adapters.kinds.vcra.config import VcraConfig, VcraLayout
from adapters.kinds.vcra.layer import draw_pair
from adapters.runtime.injection import injected_sites
from adapters.runtime.routing import Routing
from adapters.runtime.sites import MODALITIES


def layout_for(config: VcraConfig, backbone) -> VcraLayout:
    sites = injected_sites(backbone)
    te = backbone.text_encoder
    blocks = len(te.encoder.layer) if te is not None else 0
    return VcraLayout.build(config, sites, blocks, backbone.config.text_config.hidden_size,
                            backbone.config.vision_config.hidden_size)


def stack_padded(vectors: list[torch.Tensor]) -> torch.Tensor:
    """(d_i,) vectors -> (G, max d_i), zero padded (groups of a vision width != text width)."""
    width = max(v.shape[0] for v in vectors)
    return torch.stack([v if v.shape[0] == width else F.pad(v, (0, width - v.shape[0])) for v in vectors])


class PairStore(nn.Module):
    """The shared pairs: Parameters when they train, non-persistent buffers when frozen."""

    def __init__(self, config: VcraConfig, layout: VcraLayout, device):
        super().__init__()
        self.names = sorted(layout.pairs)
        for name in self.names:
            a, b = draw_pair(config.seed, name, config.rank, *layout.pairs[name])
            a, b = a.to(device), b.to(device)
            if config.train_ab:
                self.register_parameter(f"A_{name}", nn.Parameter(a))
                self.register_parameter(f"B_{name}", nn.Parameter(b))
            else:
                self.register_buffer(f"A_{name}", a, persistent=False)
                self.register_buffer(f"B_{name}", b, persistent=False)

    def pairs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {n: (getattr(self, f"A_{n}"), getattr(self, f"B_{n}")) for n in self.names}


class VcraAdapter(ConfigIdentity, nn.Module):
    @property
    def kind(self) -> str:
        """The registered kind it is: "vcra-qasn" with the side network, "vcra" without."""
        return "vcra-qasn" if self.config.qasn else "vcra"

    def __init__(self, config: VcraConfig, backbone):
        super().__init__()
        self.config = config
        self.layout = layout_for(config, backbone)
        device, r = backbone.device, config.rank
        fp32 = dict(device=device, dtype=torch.float32)
        self.lam_a = nn.ParameterDict({k: nn.Parameter(torch.ones(r, **fp32)) for k in self.layout.groups})
        self.lam_b = nn.ParameterDict({k: nn.Parameter(torch.zeros(d, **fp32)) for k, d in self.layout.groups.items()})
        self.scale = nn.Parameter(torch.tensor(float(config.scale_init), **fp32))
        blocks, d = self.layout.qasn_blocks, self.layout.qasn_width
        self.qasn_lam_a = nn.ParameterDict({str(i): nn.Parameter(torch.ones(r, **fp32)) for i in range(blocks)})
        self.qasn_lam_b = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(d, **fp32)) for i in range(blocks)})
        self.qasn_alpha = nn.ParameterDict({str(i): nn.Parameter(torch.ones(d, **fp32)) for i in range(blocks)})
        self.qasn_beta = nn.ParameterDict({str(i): nn.Parameter(torch.zeros(d, **fp32)) for i in range(blocks)})
        self.pair = PairStore(config, self.layout, device)
        if config.temporal:  # registered only when on: state-dict names (file tensors) unchanged otherwise
            k, hv = self.layout.temporal_knots, self.layout.temporal_width
            self.temporal_code = nn.Parameter(torch.zeros(k, hv, **fp32))  # c_k at relative times (k + .5) / K
            self.temporal_motion = nn.Parameter(torch.zeros(2, hv, **fp32))  # μ_back, μ_fwd

    # -- identity --------------------------------------------------------------------
    def pair_key(self) -> tuple:
        """Adapters with equal keys share (A, B) and batch through the same two matmuls."""
        return ("pair", self.config.share, self.config.seed, self.config.rank) if not self.config.train_ab else None

    def trainable_count(self) -> int:
        return self.layout.trainable_count(self.config.rank, self.config.train_ab)

    def pair_of(self) -> dict[str, str]:
        return {m: self.config.pair_of(m) for m in MODALITIES if self.config.pair_of(m) in self.pair.names}

    # -- the forward ------------------------------------------------------------------
    def routing(self) -> Routing:
        """Every row of the call uses this adapter's live parameters (gradients flow)."""
        bank = VectorBank(groups={k: g for g, k in enumerate(self.lam_a)},
                          lam_a=torch.stack(list(self.lam_a.values())).unsqueeze(0),  # (1, G, r)
                          lam_b=stack_padded(list(self.lam_b.values())).unsqueeze(0),  # (1, G, D)
                          scale=self.scale.reshape(1))
        if self.config.temporal:
            bank.temporal = (self.temporal_code.unsqueeze(0), self.temporal_motion.unsqueeze(0))  # (1, K | 2, Hv)
        if self.config.qasn:
            bank.qasn = tuple(torch.stack(list(store.values())).unsqueeze(0)  # (1, N, r | d)
                              for store in (self.qasn_lam_a, self.qasn_lam_b, self.qasn_alpha, self.qasn_beta))
        group = PairGroup(self.pair.pairs(), self.pair_of(), self.config.rank, None,
                          self.config.pair_of("cross") if self.config.qasn else None)
        return Routing(None, [VectorRouting(bank, [group], temporal=self.config.temporal)])

    def extra_repr(self) -> str:
        c = self.config
        return (f"task={c.task}, rank={c.rank}, seed={c.seed}, share={c.share}, train_ab={c.train_ab}, "
                f"qasn={c.qasn}, temporal={c.temporal}, targets={c.targets}, trainable={self.trainable_count()}")
