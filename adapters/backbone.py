"""The unified frozen BLIP backbone: every part of BLIP in one module, loaded offline.

transformers has no class holding all three tasks (captioning lacks the text
encoder, VQA lacks the ITC/ITM heads, retrieval lacks the decoder), so `Backbone`
holds the parts under the attribute names those classes use. Its state dict is
therefore the union of their layouts, and a task checkpoint loads part by part:

    vision_model.*   BlipVisionModel          (ViT; fused qkv attention)
    text_encoder.*   BlipTextModel, no pooler (the fusion encoder: self + cross attention)
    text_decoder.*   BlipTextLMHeadModel      (causal decoder with cross attention)
    vision_proj.*, text_proj.*                (ITC projections)
    itm_head.*                                (ITM classifier, 2 logits)

    bb = Backbone.from_dirs("models/blip-shapes")                 # shipped default
    bb = Backbone.from_dirs(cap_dir, vqa_dir, itm_dir, settings=BackboneSettings(dtype="bf16"))
    bb.tasks  ->  frozenset({"caption", "vqa", "retrieve"})
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import BlipConfig, BlipProcessor
from transformers.models.blip.modeling_blip import BlipVisionModel
from transformers.models.blip.modeling_blip_text import BlipTextAttention, BlipTextLMHeadModel, BlipTextModel

from adapters.errors import TaskUnavailableError

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


class Backbone(nn.Module):
    """Frozen BLIP parts plus the processor that feeds them. Parts absent from the
    loaded checkpoints are None and the tasks needing them are unavailable."""

    def __init__(self, config: BlipConfig, processor: BlipProcessor, parts=PARTS):
        super().__init__()
        unknown = set(parts) - set(PARTS)
        if unknown or "vision_model" not in parts:
            raise ValueError(f"parts must include vision_model and come from {PARTS}; got {sorted(parts)}")
        self.config = config
        self.processor = processor
        self.source = "memory"  # where it was loaded from, for /readyz and logs
        for name in PARTS:
            setattr(self, name, build_part(name, config) if name in parts else None)
        self._fingerprint: str | None = None
        self.requires_grad_(False)
        self.eval()

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_config(cls, config: BlipConfig, processor: BlipProcessor, parts=PARTS) -> "Backbone":
        """A randomly initialised backbone (transformers' own init for each part)."""
        return cls(config, processor, parts)

    @classmethod
    def from_dirs(cls, *dirs: str | os.PathLike, settings: BackboneSettings | None = None) -> "Backbone":
        """Load from one or more local directories (our own layout, transformers'
        `Salesforce/blip-*` task checkpoints). Each part is taken from the first
        directory that holds it; the processor and config from the first directory."""
        from adapters.backbone_loading import load_backbone

        return load_backbone(cls, [Path(d) for d in dirs], settings or BackboneSettings())

    def to_settings(self, settings: BackboneSettings) -> "Backbone":
        return self.to(device=settings.device, dtype=settings.torch_dtype)

    # -- what it can do -------------------------------------------------------------
    @property
    def parts(self) -> frozenset[str]:
        return frozenset(name for name in PARTS if getattr(self, name) is not None)

    @property
    def tasks(self) -> frozenset[str]:
        return frozenset(task for task, need in TASK_PARTS.items() if need <= self.parts)

    def require(self, task: str) -> None:
        if task not in TASK_PARTS:
            raise TaskUnavailableError(f"unknown task {task!r}; tasks are {sorted(TASK_PARTS)}")
        missing = TASK_PARTS[task] - self.parts
        if missing:
            raise TaskUnavailableError(
                f"this backbone cannot serve {task!r}: it lacks {sorted(missing)} "
                f"(loaded parts: {sorted(self.parts)}; available tasks: {sorted(self.tasks)})"
            )

    @property
    def device(self) -> torch.device:
        return self.vision_model.embeddings.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_model.embeddings.patch_embedding.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.config.text_config.hidden_size

    # -- identity -------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex) of the weights as loaded, before any dtype cast, so an
        adapter trained on the fp32 weights also fits their bf16 copy."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_state_dict(self.state_dict())
        return self._fingerprint

    # -- saving ---------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """Write config.json, model.safetensors (fp32) and the processor files.
        Written into a sibling temp dir then renamed, so a crash leaves no half dir."""
        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            self.config.to_json_file(str(tmp / "config.json"))
            state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            self.processor.save_pretrained(str(tmp))
            tmp.chmod(0o755)  # mkdtemp makes 0700; a model dir is meant to be read by others
            for path in tmp.iterdir():
                path.chmod(0o644)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


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
