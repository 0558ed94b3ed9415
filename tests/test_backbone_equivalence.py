"""With no adapters our backbone must return exactly what transformers' BLIP task
classes return on the same weights (saved with save_pretrained, loaded back by us)."""

from __future__ import annotations

import pytest
import torch
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering

from adapters import tasks
from adapters.backbone import Backbone
from tests.tiny import random_images

QUESTIONS = ["what colour is the circle ?", "how many squares are there ?", "is there a star ?"]


def _save(model_cls, config, processor, path, seed):
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, config, processor):
    root = tmp_path_factory.mktemp("hf")
    return {
        "caption": (_save(BlipForConditionalGeneration, config, processor, root / "cap", 1), root / "cap"),
        "vqa": (_save(BlipForQuestionAnswering, config, processor, root / "vqa", 2), root / "vqa"),
        "retrieve": (_save(BlipForImageTextRetrieval, config, processor, root / "itm", 3), root / "itm"),
    }


@pytest.fixture(scope="module")
def pixel_values(processor):
    return processor(images=random_images(3), return_tensors="pt").pixel_values


@pytest.mark.parametrize("num_beams", [1, 3])
def test_caption_matches_transformers(hf_dirs, processor, pixel_values, num_beams):
    model, path = hf_dirs["caption"]
    bb = Backbone.from_dirs(path)
    assert bb.tasks == {"caption"}
    prompt = processor.tokenizer(["a picture of "] * 3, return_tensors="pt")
    kwargs = dict(num_beams=num_beams, max_new_tokens=8, min_new_tokens=2)
    with torch.inference_mode():
        expected = model.generate(pixel_values, input_ids=prompt.input_ids.clone(),
                                  attention_mask=prompt.attention_mask, do_sample=False, **kwargs)
        ours = tasks.caption_ids(bb, pixel_values, **kwargs)
    assert torch.equal(ours, expected)
    assert ours.shape[1] >= 4 + 2  # [DEC] + 3 prompt tokens + at least min_new_tokens


@pytest.mark.parametrize("num_beams", [1, 3])
def test_vqa_matches_transformers(hf_dirs, processor, pixel_values, num_beams):
    model, path = hf_dirs["vqa"]
    bb = Backbone.from_dirs(path)
    assert bb.tasks == {"caption", "vqa"}
    kwargs = dict(num_beams=num_beams, max_new_tokens=6)
    # One question at a time: it has no padding, so transformers' all-ones cross-attention
    # mask and ours (the question's own, BLIP/LAVIS) agree. A padded batch would not:
    # transformers lets the decoder attend the padding (tests/test_vqa_batching.py).
    for i, question in enumerate(QUESTIONS):
        q = processor.tokenizer([question], return_tensors="pt")
        with torch.inference_mode():
            expected = model.generate(input_ids=q.input_ids, pixel_values=pixel_values[i:i + 1],
                                      attention_mask=q.attention_mask, do_sample=False, **kwargs)
            ours = tasks.vqa_ids(bb, pixel_values[i:i + 1], q.input_ids, q.attention_mask, **kwargs)
        assert torch.equal(ours, expected), question


def test_vqa_rank_agrees_with_transformers_loss(hf_dirs, processor, pixel_values):
    """Candidate log-likelihood = -(token count) x transformers' mean LM loss on that answer."""
    model, path = hf_dirs["vqa"]
    bb = Backbone.from_dirs(path)
    q = processor.tokenizer(QUESTIONS[:1], return_tensors="pt")
    answers = ["red", "two", "yes"]
    with torch.inference_mode():
        ours = tasks.vqa_rank(bb, pixel_values[:1], q.input_ids, q.attention_mask, [answers])[0]
        for j, answer in enumerate(answers):
            labels = processor.tokenizer([answer], return_tensors="pt").input_ids
            labels[:, 0] = bb.config.text_config.bos_token_id
            loss = model(input_ids=q.input_ids, pixel_values=pixel_values[:1], attention_mask=q.attention_mask,
                         labels=labels).loss
            # transformers averages over the (len - 1) predicted tokens
            torch.testing.assert_close(ours[j], -loss * (labels.shape[1] - 1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("use_itm_head", [True, False])
def test_retrieval_matches_transformers(hf_dirs, processor, pixel_values, use_itm_head):
    model, path = hf_dirs["retrieve"]
    bb = Backbone.from_dirs(path)
    assert bb.tasks == {"retrieve"}
    t = processor.tokenizer(QUESTIONS, padding="longest", return_tensors="pt")
    with torch.inference_mode():
        expected = model(input_ids=t.input_ids, pixel_values=pixel_values, attention_mask=t.attention_mask,
                         use_itm_head=use_itm_head).itm_score
        if use_itm_head:
            ours = tasks.itm_logits(bb, pixel_values, t.input_ids, t.attention_mask)
        else:  # transformers returns the unscaled cosine matrix images x texts
            ours = tasks.itc_image(bb, pixel_values) @ tasks.itc_text(bb, t.input_ids, t.attention_mask).T
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_combined_directories_take_each_part_from_where_it_exists(hf_dirs, pixel_values, processor):
    (cap, cap_dir), (vqa, vqa_dir), (itm, itm_dir) = hf_dirs["caption"], hf_dirs["vqa"], hf_dirs["retrieve"]
    bb = Backbone.from_dirs(cap_dir, vqa_dir, itm_dir)
    assert bb.tasks == {"caption", "vqa", "retrieve"}
    # vision and decoder from the first dir that has them (captioning), text encoder from VQA
    assert torch.equal(bb.vision_model.post_layernorm.weight, cap.vision_model.post_layernorm.weight)
    assert torch.equal(bb.text_decoder.cls.predictions.bias, cap.text_decoder.cls.predictions.bias)
    enc_key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(bb.text_encoder.state_dict()[enc_key], vqa.text_encoder.state_dict()[enc_key])
    assert torch.equal(bb.itm_head.weight, itm.itm_head.weight)
    with torch.inference_mode():
        assert len(tasks.caption(bb, pixel_values, max_new_tokens=4)) == 3


def test_bf16_setting_runs_every_task(hf_dirs, pixel_values, processor):
    from adapters.backbone import BackboneSettings

    bb = Backbone.from_dirs(hf_dirs["vqa"][1], hf_dirs["retrieve"][1], settings=BackboneSettings(dtype="bf16"))
    assert bb.dtype == torch.bfloat16
    fp32 = Backbone.from_dirs(hf_dirs["vqa"][1], hf_dirs["retrieve"][1])
    assert bb.fingerprint == fp32.fingerprint  # adapters made on fp32 weights fit the bf16 copy
    q = processor.tokenizer(QUESTIONS, padding="longest", return_tensors="pt")
    with torch.inference_mode():
        assert len(tasks.vqa(bb, pixel_values, q.input_ids, q.attention_mask, max_new_tokens=3)) == 3
        scores = tasks.itm_scores(bb, pixel_values, q.input_ids, q.attention_mask)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
