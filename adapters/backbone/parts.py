"""What a BLIP backbone is made of, independent of how it is loaded: its parts, the
tasks each needs, dtype settings, the cross-attention mask fix, and the fingerprint.

    vision_model.*   BlipVisionModel          (ViT; fused qkv attention)
    text_encoder.*   BlipTextModel, no pooler (the fusion encoder: self + cross attention)
    text_decoder.*   BlipTextLMHeadModel      (causal decoder with cross attention)
    vision_proj.*, text_proj.*                (ITC projections)
    itm_head.*                                (ITM classifier, 2 logits)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers import BlipConfig
from transformers.models.blip.modeling_blip import BlipVisionModel
from transformers.models.blip.modeling_blip_text import BlipTextAttention, BlipTextLMHeadModel, BlipTextModel


PARTS = ("vision_model", "text_encoder", "text_decoder", "vision_proj", "text_proj", "itm_head")
TASK_PARTS = {
    "caption": frozenset({"vision_model", "text_decoder"}),
    "vqa": frozenset({"vision_model", "text_encoder", "text_decoder"}),
    "retrieve": frozenset({"vision_model", "text_encoder", "vision_proj", "text_proj", "itm_head"}),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The decoder's output embedding is tied to its input embedding; transformers' saver
# drops one of the pair, so a file may hold either.
TIED_KEYS = {
    "text_decoder.cls.predictions.decoder.weight": "text_decoder.bert.embeddings.word_embeddings.weight",
    "text_decoder.cls.predictions.decoder.bias": "text_decoder.cls.predictions.bias",
}


@dataclass(frozen=True)
class BackboneSettings:
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (weights and activations)
    device: str = "cpu"  # cpu | cuda | cuda:N

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


class MaskedCrossAttention(BlipTextAttention):
    """BlipTextAttention that hands its mask to the cross-attention as the encoder mask.

    transformers 5.x `BlipTextLayer` passes the (B, 1, Lq, Lk) additive encoder mask to
    `crossattention(attention_mask=...)`, and `BlipTextSelfAttention` then reads
    `encoder_attention_mask` (None) for cross-attention: every encoder position is
    attended, padding included, whatever mask the caller gives. BLIP (models/med.py)
    masks it, and a VQA answer must not depend on the padding its batch adds, so the
    class of every cross-attention module is swapped for this one (same parameters,
    same state-dict keys; image tokens are never padded, so captions and the fusion
    encoder are unchanged)."""

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, cache=None, **kwargs):
        context, probs = self.self(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                   encoder_attention_mask=attention_mask, cache=cache)
        return self.output(context, hidden_states), probs


def _mask_cross_attention(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if hasattr(module, "crossattention"):
            assert type(module.crossattention) in (BlipTextAttention, MaskedCrossAttention), type(module.crossattention)
            module.crossattention.__class__ = MaskedCrossAttention
    return model


def build_part(name: str, config: BlipConfig) -> nn.Module:
    vision_width, text_width = config.vision_config.hidden_size, config.text_config.hidden_size
    if name == "vision_model":
        return BlipVisionModel(config.vision_config)
    if name == "text_encoder":
        return _mask_cross_attention(BlipTextModel(config.text_config, add_pooling_layer=False))
    if name == "text_decoder":
        return _mask_cross_attention(BlipTextLMHeadModel(config.text_config))
    if name == "vision_proj":
        return nn.Linear(vision_width, config.image_text_hidden_size)
    if name == "text_proj":
        return nn.Linear(text_width, config.image_text_hidden_size)
    if name == "itm_head":
        return nn.Linear(text_width, 2)
    raise ValueError(f"unknown backbone part {name!r}; parts are {PARTS}")


def fingerprint_state_dict(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        partner = TIED_KEYS.get(key)
        if partner in state and torch.equal(state[key], state[partner]):
            continue  # a tied copy: files may or may not hold it
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]
