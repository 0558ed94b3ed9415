"""At init every adapter kind leaves the backbone exactly as it was (torch.equal), for
caption (beam 3), VQA (generation and ranking), ITC and ITM; injection alone changes
nothing (outputs, state-dict keys, fingerprint); training through `attach` reaches
exactly the trainable parameters."""

from __future__ import annotations

import pytest
import torch

from adapters import attach, create_adapter, tasks
from adapters.backbone import fingerprint_state_dict
from adapters.runtime.injection import AdaptedLinear
from tests.adapter_helpers import backbone_pair, inputs

KINDS = [("vcra", {}), ("vcra", {"train_ab": True}), ("vera", {}), ("lora", {})]


@pytest.fixture(scope="module")
def pair(config, processor):
    return backbone_pair(config, processor, seed=3)


def _all_outputs(bb, routing, px, ids, mask):
    with torch.inference_mode():
        return {
            "caption": tasks.caption_ids(bb, px, num_beams=3, max_new_tokens=6, min_new_tokens=2, routing=routing),
            "vqa": tasks.vqa_ids(bb, px, ids, mask, num_beams=2, max_new_tokens=4, routing=routing),
            "rank": torch.stack(tasks.vqa_rank(bb, px, ids, mask, [["red", "two", "yes"]] * px.shape[0],
                                               routing=routing)),
            "itc_image": tasks.itc_image(bb, px, routing=routing),
            "itc_text": tasks.itc_text(bb, ids, mask, routing=routing),
            "itm": tasks.itm_logits(bb, px, ids, mask, routing=routing),
        }


def test_injection_changes_nothing(pair):
    bb, frozen = pair
    create_adapter("vcra", bb, task="vqa")  # injects
    assert any(isinstance(m, AdaptedLinear) for m in bb.modules())
    assert list(bb.state_dict()) == list(frozen.state_dict())
    assert fingerprint_state_dict(bb.state_dict()) == frozen.fingerprint == bb.fingerprint
    px, ids, mask = inputs(bb, 2)
    ours, ref = _all_outputs(bb, None, px, ids, mask), _all_outputs(frozen, None, px, ids, mask)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)


@pytest.mark.parametrize("kind,options", KINDS, ids=["vcra", "vcra-train_ab", "vera", "lora"])
@pytest.mark.parametrize("task", ["caption", "vqa", "retrieve"])
def test_adapter_at_init_is_the_frozen_backbone(pair, kind, options, task):
    bb, frozen = pair
    adapter = create_adapter(kind, bb, task=task, rank=4, seed=7, **options)
    px, ids, mask = inputs(bb, 3)
    ours = _all_outputs(bb, adapter.routing(), px, ids, mask)
    ref = _all_outputs(frozen, None, px, ids, mask)
    for key in ref:
        assert torch.equal(ours[key], ref[key]), f"{kind} {task}: {key} differs at init"


def test_training_reaches_exactly_the_trainable_parameters(pair):
    bb, _ = pair
    adapter = create_adapter("vcra", bb, task="vqa", rank=4, seed=1)
    assert adapter.config.qasn  # vqa runs the fusion encoder: QASN on by default
    assert not any(p.requires_grad for p in bb.parameters())
    assert sum(p.numel() for p in adapter.parameters()) == adapter.trainable_count()
    px, ids, mask = inputs(bb, 2)
    with attach(bb, adapter) as model:
        states = tasks.fuse(model, ids, mask, tasks.encode_image(model, px))
        loss = -tasks.answer_log_likelihood(model, states, ["red", "two"]).sum()
    loss.backward()
    grads = {n: p.grad for n, p in adapter.named_parameters()}
    # Λb starts at 0, so only Λb (and QASN's β, Λb) get a gradient on the first step
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in grads if n.startswith("lam_b."))
    assert grads["qasn_beta.0"].abs().sum() > 0 and grads["qasn_lam_b.1"].abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())


def test_train_ab_switch_decides_what_trains(pair):
    bb, _ = pair
    frozen_ab = create_adapter("vcra", bb, task="retrieve", rank=4, seed=1)
    trained_ab = create_adapter("vcra", bb, task="retrieve", rank=4, seed=1, train_ab=True)
    names = {n for n, _ in trained_ab.named_parameters()}
    assert {"pair.A_enc", "pair.B_enc"} <= names
    assert not any(n.startswith("pair.") for n, _ in frozen_ab.named_parameters())
    assert not any(k.startswith("pair.") for k in frozen_ab.state_dict())  # the file stores the seed only
    assert torch.equal(frozen_ab.pair.A_enc, trained_ab.pair.A_enc)  # same seed, same draw


def test_full_finetune_trains_a_copy(pair):
    bb, frozen = pair
    full = create_adapter("full", bb, task="caption")
    assert full.trainable_count() == sum(p.numel() for p in frozen.parameters())
    px, _, _ = inputs(bb, 1)
    with attach(bb, full) as model:
        assert model is full.model
        tasks.itc_image(model, px).sum().backward()
    assert full.model.vision_model.embeddings.patch_embedding.weight.grad is not None
    assert all(p.grad is None for p in bb.parameters())
