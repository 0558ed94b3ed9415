"""Attachment points of the backbone: every q/k/v projection adapters may wrap, the
fusion-encoder blocks the QASN side network reads and writes, and the encoder
sublayers whose outputs VL-PET's modules gate.

Modalities follow the paper's V / T / C split, with the decoder named apart:

    vision          vision_model.encoder.layers.N.self_attn.qkv        fused: out = [q; k; v], (3h x h)
    text            text_encoder.encoder.layer.N.attention.self.{query,key,value}
    cross           text_encoder.encoder.layer.N.crossattention.self.{query,key,value}
                    (key/value read image tokens: in_features = vision width)
    decoder         text_decoder.bert.encoder.layer.N.attention.self.{query,key,value}
    decoder_cross   text_decoder.bert.encoder.layer.N.crossattention.self.{query,key,value}

Sublayers (residual branches of the encoders; y = the branch output before the residual
add of its input x1): vision "attn" / "ffn" of every ViT layer (pre-LN: x1 + y), text
"attn" / "cross" / "ffn" of every text-encoder layer (post-LN: LayerNorm(x1 + y)).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

MODALITIES = ("vision", "text", "cross", "decoder", "decoder_cross")
_TEXT_PROJ = {"query": "q", "key": "k", "value": "v"}


@dataclass(frozen=True)
class Site:
    path: str  # dotted path from the Backbone root
    modality: str  # one of MODALITIES
    layer: int
    proj: str  # "q" | "k" | "v" | "qkv" (the vision encoder's fused projection)
    in_features: int
    out_features: int


def attachment_sites(backbone) -> list[Site]:
    """Sites in a fixed order (modality, layer, q/k/v), for the parts the backbone has."""
    sites: list[Site] = []

    def add(path: str, modality: str, layer: int, proj: str) -> None:
        linear = backbone.get_submodule(path)
        base = getattr(linear, "base_layer", linear)  # already wrapped by an adapter
        assert isinstance(base, nn.Linear), f"{path} is {type(base).__name__}, expected nn.Linear"
        sites.append(Site(path, modality, layer, proj, base.in_features, base.out_features))

    for i in range(len(backbone.vision_model.encoder.layers)):
        add(f"vision_model.encoder.layers.{i}.self_attn.qkv", "vision", i, "qkv")
    stacks = []
    if backbone.text_encoder is not None:
        stacks.append(("text_encoder.encoder.layer", backbone.text_encoder.encoder.layer, "text", "cross"))
    if backbone.text_decoder is not None:
        stacks.append(("text_decoder.bert.encoder.layer", backbone.text_decoder.bert.encoder.layer,
                       "decoder", "decoder_cross"))
    for prefix, layers, self_mod, cross_mod in stacks:
        for i, layer in enumerate(layers):
            for name, proj in _TEXT_PROJ.items():
                add(f"{prefix}.{i}.attention.self.{name}", self_mod, i, proj)
            if hasattr(layer, "crossattention"):
                for name, proj in _TEXT_PROJ.items():
                    add(f"{prefix}.{i}.crossattention.self.{name}", cross_mod, i, proj)
    return sites


def site_key(site: Site) -> str:
    """"{modality}_{layer}_{proj}": the name per-site tensors of a kind are stored under."""
    return f"{site.modality}_{site.layer}_{site.proj}"


@dataclass(frozen=True)
class Sublayer:
    path: str  # module that computes it: a ViT layer (both branches) or a text *Output module
    modality: str  # "vision" | "text"
    layer: int
    part: str  # "attn" | "cross" | "ffn"
    width: int  # d of x1 and y

    @property
    def key(self) -> str:
        return f"{self.modality}_{self.layer}_{self.part}"


def encoder_sublayers(backbone) -> list[Sublayer]:
    """Residual branches of the ViT and the text encoder, in a fixed order."""
    out: list[Sublayer] = []
    hv = backbone.config.vision_config.hidden_size
    for i in range(len(backbone.vision_model.encoder.layers)):
        path = f"vision_model.encoder.layers.{i}"
        out += [Sublayer(path, "vision", i, "attn", hv), Sublayer(path, "vision", i, "ffn", hv)]
    if backbone.text_encoder is not None:
        ht = backbone.config.text_config.hidden_size
        for i, layer in enumerate(backbone.text_encoder.encoder.layer):
            prefix = f"text_encoder.encoder.layer.{i}"
            out.append(Sublayer(f"{prefix}.attention.output", "text", i, "attn", ht))
            if hasattr(layer, "crossattention"):
                out.append(Sublayer(f"{prefix}.crossattention.output", "text", i, "cross", ht))
            out.append(Sublayer(f"{prefix}.output", "text", i, "ffn", ht))
    return out


def fusion_blocks(backbone) -> nn.ModuleList:
    """The text encoder's blocks b_i (BlipTextLayer), whose outputs QASN adds to."""
    if backbone.text_encoder is None:
        raise ValueError("this backbone has no text encoder (fusion network)")
    return backbone.text_encoder.encoder.layer


def replace_module(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """setattr at a dotted path; returns the module that was there."""
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
