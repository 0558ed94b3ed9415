"""Injection: wrap every q/k/v projection, hook the fusion blocks, gate the encoder
sublayers; once per backbone, whatever kinds will run.

    inject(bb)          # idempotent; outputs are unchanged until a call is routed

After `inject`, each attachment site (see `adapters.runtime.sites`) is an
`AdaptedLinear` whose frozen `nn.Linear` lives on as `.base_layer` (a plain
`setattr`, the peft way). Its forward is `base_layer(x)` and, when the current call
carries a routing, `routing.linear(self, x, out)` adds that call's per-row deltas.
No wrapper holds adapter tensors or per-call state: every kind lives in the routing
object handed to the call (`adapters.runtime.routing.routed`).

The fusion encoder's blocks get a forward hook (QASN). The encoder sublayers
(`sites.encoder_sublayers`) get their class swapped for a subclass with the same
parameters and the same frozen arithmetic, which hands the branch output y and the
branch input x1 to `routing.sublayer` before the residual add (VL-PET's gated
modules need both). The text encoder gets a pre/post hook pair that keeps its (B, L)
attention mask in a ContextVar for the span of its forward, so a sublayer can
average over real tokens only (padding never changes a row's result).

Module paths and state-dict keys stay those of the plain backbone (`...query.weight`,
not `...query.base_layer.weight`), so `Backbone.fingerprint`, `save_pretrained` and
checkpoint loading are the same before and after injection.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.blip.modeling_blip import BlipEncoderLayer
from transformers.models.blip.modeling_blip_text import BlipTextOutput, BlipTextSelfOutput

from adapters.runtime.routing import current_routing
from adapters.runtime.sites import Site, Sublayer, attachment_sites, encoder_sublayers, fusion_blocks, \
    replace_module, site_key

_MARK = "_unitrans_injected"
_TOKEN_MASK: ContextVar = ContextVar("unitrans_text_mask", default=None)


class AdaptedLinear(nn.Module):
    """A frozen `nn.Linear` plus whatever the current call's routing adds to it."""

    def __init__(self, base_layer: nn.Linear, site: Site, index: int):
        super().__init__()
        self.base_layer = base_layer
        self.site = site
        self.index = index  # position in attachment_sites order
        self.site_key = site_key(site)  # per-site tensors of a kind are stored under it
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


# -- encoder sublayers (class swaps: same parameters, same frozen arithmetic) -------------------
def _gate(sublayer: Sublayer, y: torch.Tensor, x1: torch.Tensor, mask) -> torch.Tensor:
    routing = current_routing()
    if routing is None or not routing.has_sublayers:
        return y
    return routing.sublayer(sublayer, y, x1, mask)


class GatedTextSelfOutput(BlipTextSelfOutput):
    """BlipTextSelfOutput (attention and cross-attention output): LN(x1 + dropout(dense(h)))."""

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        y = _gate(self._unitrans_sublayer, self.dropout(self.dense(hidden_states)), input_tensor, _TOKEN_MASK.get())
        return self.LayerNorm(y + input_tensor)


class GatedTextOutput(BlipTextOutput):
    """BlipTextOutput (feed-forward output): LN(x1 + dropout(dense(h)))."""

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        y = _gate(self._unitrans_sublayer, self.dropout(self.dense(hidden_states)), input_tensor, _TOKEN_MASK.get())
        return self.LayerNorm(y + input_tensor)


class GatedVisionLayer(BlipEncoderLayer):
    """BlipEncoderLayer (pre-LN): x + attn(LN1(x)), then x + mlp(LN2(x)). The gate sees the
    branch's normalised input LN(x) as x1 (the sublayer input, as in the post-LN encoders)."""

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        attn_sub, ffn_sub = self._unitrans_sublayers
        normed = self.layer_norm1(hidden_states)
        y, _ = self.self_attn(hidden_states=normed, **kwargs)
        hidden_states = _gate(attn_sub, y, normed, None) + hidden_states
        normed = self.layer_norm2(hidden_states)
        return _gate(ffn_sub, self.mlp(normed), normed, None) + hidden_states


_SWAPS = {BlipTextSelfOutput: GatedTextSelfOutput, BlipTextOutput: GatedTextOutput, BlipEncoderLayer: GatedVisionLayer}


def _swap_sublayers(backbone) -> list[Sublayer]:
    subs = encoder_sublayers(backbone)
    by_path: dict[str, list[Sublayer]] = {}
    for sub in subs:
        by_path.setdefault(sub.path, []).append(sub)
    for path, group in by_path.items():
        module = backbone.get_submodule(path)
        assert type(module) in _SWAPS, f"{path} is {type(module).__name__}: no gated twin"
        module.__class__ = _SWAPS[type(module)]
        if isinstance(module, GatedVisionLayer):
            module._unitrans_sublayers = tuple(group)  # (attn, ffn)
        else:
            (module._unitrans_sublayer,) = group
    return subs


def _mask_pre_hook(module, args, kwargs):
    _TOKEN_MASK.set(kwargs.get("attention_mask", args[1] if len(args) > 1 else None))


def _mask_post_hook(module, args, kwargs, output):
    _TOKEN_MASK.set(None)


def _qasn_hook(block_index: int, num_blocks: int):
    def hook(module, args, kwargs, output):
        routing = current_routing()
        if routing is None or not routing.has_fusion:
            return None
        encoder_states = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        if encoder_states is None:
            return None  # unimodal text pass (ITC): not the fusion network, no side network
        hidden_in = args[0] if args else kwargs["hidden_states"]
        return routing.fusion_block(block_index, num_blocks, hidden_in, output)

    return hook


def inject(backbone) -> list[Site]:
    """Wrap all attachment sites, hook the fusion blocks and gate the encoder sublayers,
    once. Returns the sites in `attachment_sites` order (their index is `AdaptedLinear.index`)."""
    if getattr(backbone, _MARK, False):
        return backbone._unitrans_sites
    sites = attachment_sites(backbone)
    backbone.fingerprint  # noqa: B018 - computed (and cached) on the untouched module tree
    for index, site in enumerate(sites):
        base = backbone.get_submodule(site.path)
        replace_module(backbone, site.path, AdaptedLinear(base, site, index))
    backbone._unitrans_sublayers = _swap_sublayers(backbone)
    if backbone.text_encoder is not None:
        backbone.text_encoder.register_forward_pre_hook(_mask_pre_hook, with_kwargs=True)
        backbone.text_encoder.register_forward_hook(_mask_post_hook, with_kwargs=True)
        blocks = fusion_blocks(backbone)
        for i, block in enumerate(blocks):
            block.register_forward_hook(_qasn_hook(i, len(blocks)), with_kwargs=True)
    backbone._unitrans_sites = sites  # the layout never changes after injection
    setattr(backbone, _MARK, True)
    return sites


def injected_sites(backbone) -> list[Site]:
    """Sites of the backbone, injecting it first if needed."""
    return inject(backbone)


def injected_sublayers(backbone) -> list[Sublayer]:
    inject(backbone)
    return backbone._unitrans_sublayers
