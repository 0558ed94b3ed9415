"""Losses: MCAM's definition and its zero set, ITC against cross entropy, hard negatives
never positive, LM labels, and the task losses against independent computations on a
tiny random backbone (with gradients reaching the weights they should)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adapters import tasks
from adapters.backbone import Backbone
from training import losses
from training.data import CaptionDataset, RetrievalDataset, VQADataset
from tests.tiny import random_images


def no_route(n):
    return None


def test_mcam_zero_for_symmetric_positive_otherwise():
    torch.manual_seed(0)
    a = torch.randn(6, 6)
    assert losses.mcam_loss(a + a.t(), tau=0.07).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(6, 6, requires_grad=True)
    value = losses.mcam_loss(s, tau=0.1)
    assert value.item() > 1e-3
    value.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_mcam_matches_the_papers_formula():
    torch.manual_seed(1)
    s, tau = torch.randn(4, 4), 0.5
    total = 0.0
    for i in range(4):
        p, q = F.softmax(s[i, :] / tau, 0), F.softmax(s[:, i] / tau, 0)
        m = (p + q) / 2
        total += 0.5 * ((p * (p / m).log()).sum() + (q * (q / m).log()).sum())
    assert losses.mcam_loss(s, tau).item() == pytest.approx(total.item() / 4, rel=1e-5)


def test_itc_is_cross_entropy_for_diagonal_positives():
    torch.manual_seed(2)
    sim = torch.randn(5, 5)
    expected = (F.cross_entropy(sim, torch.arange(5)) + F.cross_entropy(sim.t(), torch.arange(5))) / 2
    assert losses.itc_loss(sim, torch.eye(5, dtype=torch.bool)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_hard_negatives_are_never_positives():
    torch.manual_seed(3)
    idx = torch.tensor([0, 0, 1, 2, 2, 3])
    positive = idx[:, None] == idx[None, :]
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        neg = losses.hard_negatives(torch.randn(6, 6) * 5, positive, gen)
        assert not positive[torch.arange(6), neg].any()


def test_lm_labels_mask_prefix_and_padding():
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 10, 11, 12, 3, 0]])
    mask = (ids != 0).long()
    dec, labels = losses.lm_labels(ids, mask, bos=5, masked_prefix=4)
    assert dec[:, 0].tolist() == [5, 5] and torch.equal(dec[:, 1:], ids[:, 1:])
    assert labels.tolist() == [[-100] * 4 + [13, 3], [-100] * 4 + [3, -100]]


@pytest.fixture(scope="module")
def bb(config, processor):
    torch.manual_seed(0)
    return Backbone.from_config(config, processor)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    for i, im in enumerate(random_images(4)):
        im.save(root / f"{i}.png")
    return root


def test_caption_loss_scores_only_caption_tokens(bb, image_root):
    ds = CaptionDataset([{"image": f"{i}.png", "caption": c, "image_id": i}
                         for i, c in enumerate(["two green triangles", "one yellow star"])], image_root)
    batch = ds.collate([ds[0], ds[1]], bb.processor)
    assert batch["prompt_len"] == 4  # [CLS] a picture of
    loss = losses.caption_loss(bb, batch, no_route)
    # independent: log-likelihood of the caption + [SEP] after [DEC] + prompt
    emb = tasks.encode_image(bb, batch["pixel_values"])
    ids = batch["input_ids"].clone()
    ids[:, 0] = bb.config.text_config.bos_token_id
    logits = bb.text_decoder(input_ids=ids, attention_mask=batch["attention_mask"], encoder_hidden_states=emb).logits
    logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    keep = batch["attention_mask"][:, 1:].clone()
    keep[:, :3] = 0  # targets 1..3 are the prompt words
    assert loss.item() == pytest.approx((-(logp * keep).sum() / keep.sum()).item(), rel=1e-5)


def test_vqa_loss_is_weighted_answer_likelihood(bb, image_root):
    ds = VQADataset([{"question_id": 1, "image": "0.png", "question": "how many squares are there ?",
                      "answer": ["2"] * 8 + ["two"] * 2},
                     {"question_id": 2, "image": "1.png", "question": "is there a star ?", "answer": ["yes"] * 10}],
                    image_root)
    batch = ds.collate([ds[0], ds[1]], bb.processor)
    assert batch["answer_rows"].tolist() == [0, 0, 1] and batch["answer_weight"].tolist() == pytest.approx([.8, .2, 1])
    loss = losses.vqa_loss(bb, batch, no_route)
    states = tasks.question_states(bb, batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    rows = [0, 0, 1]
    assert batch["attention_mask"][1].tolist().count(0) > 0  # the shorter question is padded in this batch
    ll = tasks.answer_log_likelihood(bb, states[rows], ["2", "two", "yes"], batch["attention_mask"][rows])
    assert loss.item() == pytest.approx((-(torch.tensor([.8, .2, 1.0]) * ll).sum() / 2).item(), rel=1e-5)


def test_retrieval_loss_parts_and_gradients(bb, image_root):
    ds = RetrievalDataset([{"image": f"{i}.png", "caption": [c]} for i, c in
                           enumerate(["two green triangles", "one yellow star", "a red circle left of a blue square",
                                      "two green triangles"])], image_root)
    batch = ds.collate([ds[i] for i in range(4)], bb.processor)
    proj = bb.text_proj.weight
    proj.requires_grad_(True)  # stand-in trainable weight, for the gradient check only
    try:
        cfg = losses.RetrievalLossConfig(mcam=True, mcam_tau=0.1)
        out = losses.retrieval_loss(bb, batch, no_route, cfg, torch.Generator().manual_seed(0))
        assert out["mcam"].item() > 0 and out["itm"].item() > 0
        assert out["loss"].item() == pytest.approx((out["itc"] + out["mcam"] + out["itm"]).item(), rel=1e-6)
        out["loss"].backward()
        assert proj.grad is not None and proj.grad.abs().sum() > 0
        off = losses.retrieval_loss(bb, batch, no_route, losses.RetrievalLossConfig(mcam=False),
                                    torch.Generator().manual_seed(0))
        assert off["mcam"].item() == 0 and off["itc"].item() == pytest.approx(out["itc"].item(), rel=1e-6)
    finally:
        proj.requires_grad_(False)
        proj.grad = None
