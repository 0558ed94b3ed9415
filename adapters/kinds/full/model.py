"""Full fine-tuning baseline: training-only, for comparison with the adapters.

A full fine-tune changes every backbone weight, so it cannot live in the adapter
table beside one frozen backbone: its result is a new backbone directory.
`FullFinetune` holds a trainable deep copy of the backbone (`.model`); training code
runs the task functions on `.model` (that is what `attach` yields), and
`save_adapter(full, out_dir, recipe=...)` writes `out_dir` with
`Backbone.save_pretrained` plus `unitrans_full.json` (recipe and the source
backbone's fingerprint). Serve it by starting the server on that directory.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from torch import nn

from adapters.kinds.base import AdapterKind

FULL_META = "unitrans_full.json"


class FullFinetune(nn.Module):
    kind = "full"

    def __init__(self, backbone, task: str):
        super().__init__()
        self.task = task
        self.rank = 0
        self.seed = 0
        self.backbone_fingerprint = backbone.fingerprint
        self.model = copy.deepcopy(backbone)
        self.model._fingerprint = None  # its weights will change
        self.model.requires_grad_(True)

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def routing(self) -> None:
        return None  # the weights themselves are the adaptation

    def save(self, out_dir, recipe: dict) -> Path:
        out = self.model.save_pretrained(out_dir)
        meta = {"kind": "full", "task": self.task, "source_backbone_fingerprint": self.backbone_fingerprint,
                "trainable_params": self.trainable_count(), "recipe": recipe}
        (out / FULL_META).write_text(json.dumps(meta, indent=2))
        return out


class FullKind(AdapterKind):
    """Training-only: no table slot, no adapter file (`save` writes a backbone directory)."""

    name = "full"
    servable = False

    def touches_vision(self, meta) -> bool:
        return True  # its own copy of every weight, the ViT included

    def create(self, backbone, *, task, rank=0, seed=0, train_ab=True, **options):
        if options:
            raise ValueError(f"full fine-tuning takes no options, got {sorted(options)}")
        return FullFinetune(backbone, task)  # rank / seed ignored
