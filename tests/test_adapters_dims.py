"""The dims rule, on a backbone whose vision width (48) differs from its text width (32):
pairs are sized by the widest input / per-projection output among their modalities'
sites; narrower sites read A[:, :in] and B[:out]; the fused vision qkv is three
h-sized blocks [q; k; v] with k and v sharing one vector pair."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BlipConfig

from adapters import AdapterTable, create_adapter, routed, tasks
from adapters.runtime.injection import AdaptedLinear
from adapters.runtime.sites import attachment_sites
from tests.adapter_helpers import backbone_pair, inputs, randomize
from tests.tiny import IMAGE_SIZE
from training.tokenizer import blip_text_config_ids

HV, HT, R = 48, 32, 4


@pytest.fixture(scope="module")
def env(processor):
    config = BlipConfig(
        vision_config=dict(hidden_size=HV, intermediate_size=2 * HV, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8),
        text_config=dict(hidden_size=HT, intermediate_size=2 * HT, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=64, encoder_hidden_size=HV, **blip_text_config_ids(processor.tokenizer)),
        image_text_hidden_size=16,
    )
    bb, frozen = backbone_pair(config, processor, seed=1)
    adapter = create_adapter("vcra", bb, task="vqa", rank=R, seed=4)
    randomize(adapter, seed=5)
    return bb, frozen, adapter


def test_pair_shapes(env):
    _, _, adapter = env
    pairs = {n: (a.shape, b.shape) for n, (a, b) in adapter.pair.pairs().items()}
    # enc serves vision (in 48, out 48), text (32, 32), cross (q: 32 -> 32, k/v: 48 -> 32)
    # dec serves the decoder's self (32 -> 32) and cross (q: 32 -> 32, k/v: 48 -> 32) attention
    assert pairs == {"enc": ((R, HV), (HV, R)), "dec": ((R, HV), (HT, R))}
    assert adapter.lam_b["vision_0_q"].shape == (HV,) and adapter.lam_b["cross_1_kv"].shape == (HT,)


def _expected_delta(site, x, adapter):
    pair = "dec" if site.modality.startswith("decoder") else "enc"
    a, b = adapter.pair.pairs()[pair]
    s = adapter.scale

    def one(group, out):
        return s * adapter.lam_b[group] * F.linear(adapter.lam_a[group] * F.linear(x, a[:, : site.in_features]), b[:out])

    base = f"{site.modality}_{site.layer}_"
    if site.proj == "qkv":
        q, kv = one(base + "q", HV), one(base + "kv", HV)
        return torch.cat([q, kv, kv], -1)
    return one(base + ("q" if site.proj == "q" else "kv"), site.out_features)


def test_every_site_follows_the_rule(env):
    bb, _, adapter = env
    seen = {}

    def hook(module, args, out):
        seen[module.site] = (args[0], out - module.base_layer(args[0]))

    handles = [m.register_forward_hook(hook) for m in bb.modules() if isinstance(m, AdaptedLinear)]
    px, ids, mask = inputs(bb, 2)
    try:
        with torch.inference_mode(), routed(adapter.routing()):
            image = tasks.encode_image(bb, px)
            tasks.fuse(bb, ids, mask, image)
            # the decoder cross-attends to image tokens here (caption): its k/v read width 48
            tasks.answer_log_likelihood(bb, image, ["red", "two"])
    finally:
        for h in handles:
            h.remove()
    kinds = {(s.modality, s.proj, s.in_features) for s in seen}
    assert ("vision", "qkv", HV) in kinds and ("cross", "k", HV) in kinds and ("decoder_cross", "v", HV) in kinds
    assert len(seen) == len(attachment_sites(bb)) == 2 + 4 * 2 * 3  # every site ran
    for site, (x, delta) in seen.items():
        torch.testing.assert_close(delta, _expected_delta(site, x, adapter), atol=1e-5, rtol=1e-4,
                                   msg=f"{site.path}")


def test_init_and_mixed_on_unequal_widths(env):
    bb, frozen, adapter = env
    fresh = create_adapter("vcra", bb, task="vqa", rank=R, seed=4)
    px, ids, mask = inputs(bb, 3)
    table = AdapterTable(bb, capacity=2, max_rank=R)
    table.insert("t", adapter)
    with torch.inference_mode():
        # (VQA needs the decoder's cross-attention to read text-width states: with vision width
        # != text width, transformers' single encoder_hidden_size cannot express that; caption can)
        assert torch.equal(tasks.caption_ids(bb, px, routing=fresh.routing(), num_beams=2, max_new_tokens=3),
                           tasks.caption_ids(frozen, px, num_beams=2, max_new_tokens=3))
        mixed = tasks.itm_logits(bb, px, ids, mask, routing=table.routing(["t", None, "t"]))
        alone = tasks.itm_logits(bb, px[:1], ids[:1], mask[:1], routing=table.routing(["t"]))
        ref = tasks.itm_logits(frozen, px, ids, mask)  # same batch: the frozen row must match exactly
    torch.testing.assert_close(mixed[0], alone[0], atol=1e-5, rtol=1e-4)
    assert torch.equal(mixed[1], ref[1])
