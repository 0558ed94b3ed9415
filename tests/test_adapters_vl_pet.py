"""VL-PET's four kinds: the frozen model at init, G of each granularity with its shape
and formula, where the modules sit on BLIP, gradients to every tensor, padding never
moving a row (the small gate averages real tokens only), files refused with named errors."""

from __future__ import annotations

import json
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from adapters import AdapterFileError, AdapterTable, attach, create_adapter, load_adapter, read_adapter_meta, \
    save_adapter, tasks
from adapters.kinds.vl_pet.layer import gate
from tests.adapter_helpers import backbone_pair, inputs, randomize
from tests.tiny import random_images

GRANULARITIES = ("large", "middle-x", "middle-y", "small")
KINDS = [f"vl-pet-{g}" for g in GRANULARITIES]


@pytest.fixture(scope="module")
def pair(config, processor):
    return backbone_pair(config, processor, seed=21)


def _outputs(bb, routing, px, ids, mask):
    with torch.inference_mode():
        return {"caption": tasks.caption_ids(bb, px, num_beams=2, max_new_tokens=4, routing=routing),
                "vqa": tasks.vqa_ids(bb, px, ids, mask, num_beams=2, max_new_tokens=3, routing=routing),
                "itm": tasks.itm_logits(bb, px, ids, mask, routing=routing),
                "itc_text": tasks.itc_text(bb, ids, mask, routing=routing)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("task", ["caption", "vqa", "retrieve"])
def test_identity_at_init(pair, kind, task):
    bb, frozen = pair
    adapter = create_adapter(kind, bb, task=task, rank=4, seed=1)
    px, ids, mask = inputs(bb, 3, seed=2)
    ours, ref = _outputs(bb, adapter.routing(), px, ids, mask), _outputs(frozen, None, px, ids, mask)
    for key in ours:
        assert torch.equal(ours[key], ref[key]), (kind, task, key)
    randomize(adapter, seed=3)
    moved = _outputs(bb, adapter.routing(), px, ids, mask)
    key = "caption" if task == "caption" else "itm"  # a path the task's modules sit on
    assert not torch.equal(moved[key], ref[key])


def test_placement_follows_the_task(pair):
    """caption: ViT branches + decoder cross-attention values; retrieve: ViT + text encoder
    (self, cross, FFN branches), no decoder; the decoder's self-attention never."""
    bb, _ = pair
    cap = create_adapter("vl-pet-large", bb, task="caption", rank=4)
    ret = create_adapter("vl-pet-large", bb, task="retrieve", rank=4)
    layers = len(bb.vision_model.encoder.layers)
    assert sorted(cap.down) == sorted(f"vision_{i}_{p}" for i in range(layers) for p in ("attn", "ffn"))
    assert sorted(cap.vdown) == [f"decoder_cross_{i}_v" for i in range(layers)]
    assert {k.rsplit("_", 1)[1] for k in ret.down if k.startswith("text_")} == {"attn", "cross", "ffn"}
    assert len(ret.vdown) == 0
    assert cap.vdown["decoder_cross_0_v"].shape[1] == bb.config.text_config.encoder_hidden_size


def test_gate_shapes_and_formulas():
    n, length, d, r = 2, 5, 6, 3
    gen = torch.Generator().manual_seed(0)
    x1, y1 = torch.randn(n, length, d, generator=gen), torch.randn(n, length, d, generator=gen)
    p = {"gate_down.k": torch.randn(r, d, generator=gen), "gate_down_b.k": torch.randn(r, generator=gen),
         "gate_up.k": torch.randn(d, r, generator=gen), "gate_up_b.k": torch.randn(d, generator=gen),
         "gate_w.k": torch.randn(d, generator=gen), "gate_b.k": torch.randn(1, generator=gen),
         "gate.k": torch.randn(d, generator=gen)}
    large = gate(p, "large", "k", x1, y1, None)
    expect = 2 * torch.sigmoid(F.linear(F.gelu(F.linear(x1, p["gate_down.k"], p["gate_down_b.k"]), approximate="tanh"),
                                        p["gate_up.k"], p["gate_up_b.k"]))
    torch.testing.assert_close(large, expect)
    middle_x = gate(p, "middle-x", "k", x1, y1, None)
    torch.testing.assert_close(middle_x, 2 * torch.sigmoid((x1 + y1) @ p["gate_w.k"] + p["gate_b.k"])[..., None])
    assert gate(p, "middle-y", "k", x1, y1, None).shape == (d,)
    p_small = {**p, "gate_w.k": torch.randn(2 * d, generator=gen)}
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    small = gate(p_small, "small", "k", x1, y1, mask)
    per_token = torch.sigmoid(torch.cat([x1, y1], -1) @ p_small["gate_w.k"] + p_small["gate_b.k"])  # (n, L)
    assert small.shape == (n, 1, 1)
    torch.testing.assert_close(small[:, 0, 0], 2 * torch.stack([per_token[0, :3].mean(), per_token[1].mean()]))
    assert large.shape == (n, length, d) and middle_x.shape == (n, length, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_training_reaches_every_tensor(pair, kind):
    bb, _ = pair
    adapter = create_adapter(kind, bb, task="vqa", rank=4, seed=2)
    randomize(adapter, seed=5, scale=0.2)  # away from 0, so every product has a gradient
    px, ids, mask = inputs(bb, 2)
    with attach(bb, adapter) as model:
        states = tasks.question_states(model, px, ids, mask)
        loss = tasks.answer_log_likelihood(model, states, ["red", "two"], mask).sum()
        loss = loss + tasks.itc_text(model, ids, mask).sum()
    loss.backward()
    dead = [n for n, p in adapter.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead
    assert not any(p.grad is not None for p in bb.parameters())


@pytest.mark.parametrize("kind", ["vl-pet-small", "vl-pet-middle-x"])
def test_padding_never_moves_a_row(pair, kind):
    """A question padded to a longer batch neighbour gets the answer and ITM score it gets alone."""
    bb, _ = pair
    table = AdapterTable(bb, capacity=2)
    adapter = create_adapter(kind, bb, task="vqa", rank=4, seed=6)
    randomize(adapter, seed=7)
    table.insert("a", adapter)
    px = tasks.pixels(bb, random_images(2, seed=9))
    short, long_ = "is there a star ?", "what colour is the circle ? how many squares are there ?"
    ids, mask = tasks.tokens(bb, [short, long_])
    alone_ids, alone_mask = tasks.tokens(bb, [short])
    assert ids.shape[1] > alone_ids.shape[1]  # the short question really is padded in the batch
    with torch.inference_mode():
        both = tasks.vqa_ids(bb, px, ids, mask, max_new_tokens=4, min_new_tokens=4, routing=table.routing(["a", "a"]))
        alone = tasks.vqa_ids(bb, px[:1], alone_ids, alone_mask, max_new_tokens=4, min_new_tokens=4,
                              routing=table.routing(["a"]))
        itm_both = tasks.itm_logits(bb, px, ids, mask, routing=table.routing(["a", "a"]))
        itm_alone = tasks.itm_logits(bb, px[:1], alone_ids, alone_mask, routing=table.routing(["a"]))
    assert torch.equal(both[0], alone[0])
    torch.testing.assert_close(itm_both[0], itm_alone[0], atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def saved(pair, tmp_path_factory):
    bb, _ = pair
    adapter = create_adapter("vl-pet-large", bb, task="vqa", rank=4, seed=3, gate_rank=2)
    randomize(adapter, seed=4)
    return adapter, save_adapter(adapter, tmp_path_factory.mktemp("vlpet") / "a.safetensors", recipe={"lr": 1e-3})


def test_file_round_trip(pair, saved):
    bb, _ = pair
    adapter, path = saved
    meta = read_adapter_meta(path)
    assert (meta.kind, meta.task, meta.rank, meta.options) == ("vl-pet-large", "vqa", 4, {"gate_rank": 2})
    assert meta.trainable_params == adapter.trainable_count() == sum(p.numel() for p in adapter.parameters())
    back = load_adapter(path, bb)
    assert back.kind == "vl-pet-large" and back.config == adapter.config
    assert all(torch.equal(a, b) for a, b in zip(adapter.state_dict().values(), back.state_dict().values()))


def _rewrite(path, out, *, meta=None, tensors=None):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    t = st_load(data)
    if tensors:
        tensors(t)
    m = header["__metadata__"]
    if meta:
        meta(m)
    out.write_bytes(st_save(t, metadata=m))
    return out


@pytest.mark.parametrize("case, edit, message", [
    ("gate rank", dict(meta=lambda m: m.update(options=json.dumps({"gate_rank": 3}))), "has shape"),
    ("granularity", dict(meta=lambda m: m.update(kind="vl-pet-small")), "gate_rank is for granularity 'large'"),
    ("other granularity's tensors", dict(meta=lambda m: m.update(kind="vl-pet-small", options='{"gate_rank": null}')),
     "tensor names do not match a vl-pet-small adapter"),
    ("unknown kind", dict(meta=lambda m: m.update(kind="vl-pet-huge")), "field 'kind'"),
    ("bad option", dict(meta=lambda m: m.update(options=json.dumps({"gate_rank": 2, "heads": 4}))),
     "describe no valid vl-pet-large adapter"),
    ("nan", dict(tensors=lambda t: t["up.vision_0_attn"].fill_(float("nan"))), "NaN or inf"),
    ("missing tensor", dict(tensors=lambda t: t.pop("gate_up_b.text_1_cross")), "missing ['gate_up_b.text_1_cross']"),
    ("shape", dict(tensors=lambda t: t.update({"vup.decoder_cross_0_v": torch.zeros(3, 4)})), "has shape (3, 4)"),
])
def test_bad_files_are_refused_by_name(pair, saved, tmp_path, case, edit, message):
    bb, _ = pair
    _, path = saved
    bad = _rewrite(path, tmp_path / "bad.safetensors", **edit)
    table = AdapterTable(bb, capacity=2)
    with pytest.raises(AdapterFileError) as err:
        table.load("bad", bad)
    assert message in str(err.value) and "bad.safetensors" in str(err.value), str(err.value)
    assert len(table) == 0
