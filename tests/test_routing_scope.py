"""Task functions called without `routing=` keep the routing already in force
(a live adapter entered with `attach`); an explicit routing wins for its call."""

from __future__ import annotations

import torch

from adapters import attach, create_adapter, tasks
from tests.adapter_helpers import backbone_pair, inputs, randomize


def test_task_call_inside_attach_uses_the_live_adapter(config, processor):
    bb, frozen = backbone_pair(config, processor)
    adapter = create_adapter("vcra", bb, task="vqa", rank=4, seed=0)
    randomize(adapter, seed=1)
    px, ids, mask = inputs(bb, 2)
    with torch.inference_mode():
        explicit = tasks.itm_logits(bb, px, ids, mask, routing=adapter.routing())
        plain = tasks.itm_logits(frozen, px, ids, mask)
        with attach(bb, adapter) as model:
            inherited = tasks.itm_logits(model, px, ids, mask)
        after = tasks.itm_logits(bb, px, ids, mask)
    assert not torch.allclose(explicit, plain)  # the adapter really changes the output
    assert torch.equal(inherited, explicit)
    assert torch.equal(after, plain)  # leaving attach restores the frozen backbone
