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

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import BlipConfig, BlipProcessor

from adapters.backbone.loading import load_backbone
from adapters.backbone.parts import PARTS, TASK_PARTS, BackboneSettings, build_part, fingerprint_state_dict
from adapters.errors import TaskUnavailableError


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


