"""Questions of any length share one VQA call: a batch pads them to its longest and the
decoder never attends the padding, so each row's answer equals the one its question
gets alone (no padding at all), beam search and mixed adapters included. Also: the
decoding defaults, and why an answer is never ""."""

from __future__ import annotations

import pytest
import torch

from adapters import AdapterTable, create_adapter, predict, tasks
from tests.adapter_helpers import backbone_pair, randomize
from tests.tiny import random_images

# 3 to 10 tokens with [CLS]/[SEP]: every row is padded in a batch but the longest
QUESTIONS = ["red", "is there a star ?", "what colour is the circle ?", "two",
             "a red circle left of a blue square", "how many squares are there ?"]


@pytest.fixture(scope="module")
def setup(config, processor):
    bb, _ = backbone_pair(config, processor, seed=11)
    table = AdapterTable(bb, capacity=4, max_rank=8)
    for j, name in enumerate(["a", "b"]):
        adapter = create_adapter("vcra", bb, task="vqa", rank=4, seed=0)
        randomize(adapter, seed=300 + j, scale=1.5)  # large: answers differ by question and adapter
        table.insert(name, adapter)
    px = tasks.pixels(bb, random_images(len(QUESTIONS), seed=21))
    ids = predict.question_ids(bb, QUESTIONS, max_length=40)
    return bb, table, px, ids


NAMES = ["a", None, "b", "a", "b", None]


def test_questions_really_differ_in_length(setup):
    _, _, _, ids = setup
    lengths = [len(q) for q in ids]
    assert min(lengths) == 3 and max(lengths) == 10 and len(set(lengths)) >= 4


def test_decoder_ignores_question_padding(setup):
    """Padding filled with garbage states changes nothing under the question's mask; with
    transformers' all-ones mask (what BlipForQuestionAnswering passes) it does."""
    bb, _, px, ids = setup
    q = ids[0][None]  # (1, 3)
    with torch.inference_mode():
        states = tasks.question_states(bb, px[:1], q, torch.ones_like(q))  # (1, 3, H)
        padded = torch.cat([states, 50 * torch.randn(1, 5, states.shape[2])], 1)  # (1, 8, H)
        mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]])
        answers = ["red", "two", "yes"]
        alone = tasks.answer_log_likelihood(bb, states.expand(3, -1, -1), answers)
        masked = tasks.answer_log_likelihood(bb, padded.expand(3, -1, -1), answers, mask.expand(3, -1))
        unmasked = tasks.answer_log_likelihood(bb, padded.expand(3, -1, -1), answers, torch.ones_like(mask).expand(3, -1))
    torch.testing.assert_close(masked, alone, atol=1e-5, rtol=0)
    assert (unmasked - alone).abs().max() > 1e-2


@pytest.mark.parametrize("num_beams", [1, 3])
def test_each_row_equals_its_question_alone(setup, num_beams):
    bb, table, px, ids = setup
    batch_ids, mask = predict.pad_questions(bb, ids)
    assert mask.sum(1).tolist() == [len(q) for q in ids] and (mask == 0).any()
    kwargs = dict(num_beams=num_beams, max_new_tokens=6, min_new_tokens=1, suppress_ids=predict.suppressed_ids(bb))
    with torch.inference_mode():
        together = tasks.vqa_ids(bb, px, batch_ids, mask, routing=table.routing(NAMES), **kwargs)
        pad = bb.config.text_config.pad_token_id
        alone_ids = []
        for i, name in enumerate(NAMES):
            alone = tasks.vqa_ids(bb, px[i:i + 1], ids[i][None], None, routing=table.routing([name]), **kwargs)[0]
            assert torch.equal(together[i, : len(alone)], alone), f"row {i} ({QUESTIONS[i]!r}, {name})"
            assert (together[i, len(alone):] == pad).all()
            alone_ids.append(alone.tolist())
        texts = predict.answers(bb, px, ids, num_beams=num_beams, max_new_tokens=6, routing=table.routing(NAMES))
    assert texts == [bb.processor.tokenizer.decode(a, skip_special_tokens=True).strip() for a in alone_ids]
    assert len(set(texts)) >= 3, texts  # the rows really differ, else equality proves little


def test_ranking_rows_equal_their_question_alone(setup):
    bb, table, px, ids = setup
    candidates = [["red", "blue"], ["yes", "no", "two"], ["one"], ["a red circle", "green"], ["yes"], ["two", "3"]]
    with torch.inference_mode():
        together = predict.rank_answers(bb, px, ids, candidates, routing=table.routing(NAMES))
        for i, name in enumerate(NAMES):
            alone = predict.rank_answers(bb, px[i:i + 1], ids[i:i + 1], candidates[i:i + 1],
                                         routing=table.routing([name]))[0]
            torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=1e-5, msg=f"row {i}")


def test_vqa_defaults_follow_lavis():
    assert predict.VQA == predict.Decoding(num_beams=3, max_new_tokens=10, min_new_tokens=1)
    assert predict.decoding("vqa", num_beams=1) == predict.Decoding(1, 10, 1)
    assert predict.decoding("caption") == predict.Decoding(1, 30, 0)
    with pytest.raises(ValueError):
        predict.decoding("vqa", max_new_tokens=0)


def test_an_answer_is_never_empty(config, processor):
    """A decoder that prefers special tokens: unsuppressed, min_new_tokens=1 still decodes
    to "" ([PAD], [UNK]... are skipped when decoding); predict.answers suppresses every
    special token but [SEP], so its answers hold at least one word piece."""
    bb, _ = backbone_pair(config, processor, seed=2)
    specials = [i for i in processor.tokenizer.all_special_ids if i != bb.config.text_config.sep_token_id]
    with torch.no_grad():
        bb.text_decoder.cls.predictions.bias[specials] += 50.0
    px = tasks.pixels(bb, random_images(3, seed=1))
    ids = predict.question_ids(bb, QUESTIONS[:3], max_length=40)
    input_ids, mask = predict.pad_questions(bb, ids)
    with torch.inference_mode():
        raw = tasks.vqa(bb, px, input_ids, mask, num_beams=3, max_new_tokens=10, min_new_tokens=1)
        served = predict.answers(bb, px, ids)
    assert raw == ["", "", ""]
    assert all(a.strip() for a in served), served
