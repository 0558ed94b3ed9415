"""Injection: wrap every q/k/v projection once, hook the fusion blocks once.

    inject(bb)          # idempotent; outputs are unchanged until a call is routed

After `inject`, each attachment site (see `adapters.sites`) is an `AdaptedLinear`
whose frozen `nn.Linear` lives on as `.base_layer` (a plain `setattr`, the peft
way). Its forward is `base_layer(x)` and, when the current call carries a routing,
`routing.linear(self, x, out)` adds that call's per-row adapter deltas. The
wrapper holds no adapter tensors and no per-call state: every adapter kind lives
in the routing object handed to the call (`adapters.routing.routed`).

The fusion encoder's blocks (`sites.fusion_blocks`) get a forward hook for the
QASN side network (`adapters.qasn`). Hooks rather than wrappers keep every module
path (and so `attachment_sites`) unchanged.

State-dict keys stay those of the plain backbone (`...query.weight`, not
`...query.base_layer.weight`), so `Backbone.fingerprint`, `save_pretrained` and
checkpoint loading are the same before and after injection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adapters.routing import current_routing
from adapters.sites import Site, attachment_sites, fusion_blocks, replace_module

_MARK = "_unitrans_injected"


class AdaptedLinear(nn.Module):
    """A frozen `nn.Linear` plus whatever the current call's routing adds to it."""

    def __init__(self, base_layer: nn.Linear, site: Site, index: int):
        super().__init__()
        self.base_layer = base_layer
        self.site = site
        self.index = index  # position in attachment_sites order
        from adapters.vcra.config import group_keys  # (adapters.vcra imports this module)

        self.group_keys = group_keys(site)  # VCRA vector groups it reads (q / kv)
        self.site_key = f"{site.modality}_{site.layer}_{site.proj}"  # LoRA tensors' key
        # Keep the plain Linear's state-dict keys (see module docstring).
        self.register_state_dict_post_hook(_drop_base_prefix)
        self.register_load_state_dict_pre_hook(_add_base_prefix)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        out = F.linear(x, base.weight, base.bias)  # = base(x), minus a module call per projection
        routing = current_routing()
        if routing is None:
            return out  # frozen backbone: exactly the base output
        return routing.linear(self, x, out)

    def extra_repr(self) -> str:
        return f"site={self.site.modality}.{self.site.layer}.{self.site.proj}"


def _drop_base_prefix(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "base_layer.")]:
        state_dict[prefix + key[len(prefix) + len("base_layer."):]] = state_dict.pop(key)


def _add_base_prefix(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    for name in ("weight", "bias"):
        if prefix + name in state_dict:
            state_dict[prefix + "base_layer." + name] = state_dict.pop(prefix + name)


def _qasn_hook(block_index: int, num_blocks: int):
    def hook(module, args, kwargs, output):
        routing = current_routing()
        if routing is None or not getattr(routing, "has_qasn", False):
            return None
        encoder_states = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        if encoder_states is None:
            return None  # unimodal text pass (ITC): not the fusion network, no side network
        hidden_in = args[0] if args else kwargs["hidden_states"]
        return routing.fusion_block(block_index, num_blocks, hidden_in, output)

    return hook


def inject(backbone) -> list[Site]:
    """Wrap all attachment sites and hook the fusion blocks, once. Returns the sites
    in `attachment_sites` order (their index is `AdaptedLinear.index`)."""
    if getattr(backbone, _MARK, False):
        return backbone._unitrans_sites
    sites = attachment_sites(backbone)
    backbone.fingerprint  # noqa: B018 - computed (and cached) on the untouched module tree
    for index, site in enumerate(sites):
        base = backbone.get_submodule(site.path)
        replace_module(backbone, site.path, AdaptedLinear(base, site, index))
    if backbone.text_encoder is not None:
        blocks = fusion_blocks(backbone)
        for i, block in enumerate(blocks):
            block.register_forward_hook(_qasn_hook(i, len(blocks)), with_kwargs=True)
    backbone._unitrans_sites = sites  # the layout never changes after injection
    setattr(backbone, _MARK, True)
    return sites


def injected_sites(backbone) -> list[Site]:
    """Sites of the backbone, injecting it first if needed."""
    return inject(backbone)
