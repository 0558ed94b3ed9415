"""The backbone: one frozen BLIP with every part of it, how it is loaded and converted,
and the batched task functions that run it.

    parts.py             parts, tasks' needs, settings, cross-attention mask fix, fingerprint
    loading.py           backbone directories on disk -> tensors, offline, errors naming the file
    model.py             `Backbone`: the parts in one nn.Module
    convert_original.py  the original BLIP checkpoint (model_base.pth) -> a backbone directory
    tasks.py             caption / VQA / ITC / ITM on a batch, transformers' semantics
    predict.py           predictions as served and evaluated (decoding defaults, padding)

Knows nothing of adapter kinds: a call is adapted only through the routing in force
(`adapters.runtime.routing`).
"""

from adapters.backbone.model import Backbone
from adapters.backbone.parts import PARTS, TASK_PARTS, BackboneSettings, fingerprint_state_dict

__all__ = ["PARTS", "TASK_PARTS", "Backbone", "BackboneSettings", "fingerprint_state_dict"]
