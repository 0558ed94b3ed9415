"""Video on the image backbone and adapters (BLIP's video transfer), against a direct
computation on a tiny BLIP: frames through the ViT one by one, their tokens concatenated
for the fusion encoder and decoder, ITC = the normalised mean of the frames' projected
[CLS] (computed here that way; the code projects the mean [CLS], equal as the projection
is affine). A mixed-adapter video batch gives each row exactly what it gets alone, beam
search included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adapters import AdapterTable, create_adapter, tasks
from adapters.backbone import frames as frames_mod
from tests.adapter_helpers import QUESTIONS, backbone_pair, randomize
from tests.tiny import random_images

NUM_FRAMES = 3


@pytest.fixture(scope="module")
def setup(config, processor):
    bb, frozen = backbone_pair(config, processor, seed=7)
    table = AdapterTable(bb, capacity=8, max_rank=8)
    for i, (name, kind) in enumerate([("a", "vcra"), ("b", "vcra"), ("q", "vcra-qasn"), ("lora", "lora"),
                                      ("pet", "vl-pet-small")]):
        adapter = create_adapter(kind, bb, task="vqa", rank=4, seed=0)
        randomize(adapter, seed=50 + i)
        table.insert(name, adapter)
    return bb, frozen, table


def _video(bb, n: int, seed: int, num_frames: int = NUM_FRAMES) -> torch.Tensor:
    ims = random_images(n * num_frames, seed=seed)
    return tasks.video_pixels(bb, [ims[i * num_frames:(i + 1) * num_frames] for i in range(n)])  # (n, F, 3, H, W)


def test_video_tokens_are_the_frames_tokens_concatenated(setup):
    bb, frozen, _ = setup
    px = _video(bb, 2, seed=1)
    with torch.inference_mode():
        tokens = tasks.encode_image(frozen, px)
        per_frame = [tasks.encode_image(frozen, px[:, f]) for f in range(NUM_FRAMES)]  # (2, T, Hv) each
    assert tokens.shape == (2, NUM_FRAMES * tasks.frame_tokens(frozen), per_frame[0].shape[-1])
    assert torch.equal(tokens, torch.cat(per_frame, dim=1))


def test_video_itc_is_the_normalised_mean_of_frame_features(setup):
    bb, frozen, _ = setup
    px = _video(bb, 2, seed=2)
    with torch.inference_mode():
        got = tasks.itc_image(frozen, px)
        cls = torch.stack([tasks.encode_image(frozen, px[:, f])[:, 0] for f in range(NUM_FRAMES)], 1)  # (2, F, Hv)
        want = F.normalize(frozen.vision_proj(cls).mean(1), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2))


def test_video_vqa_matches_a_direct_computation(setup):
    bb, frozen, _ = setup
    px = _video(bb, 2, seed=3)
    ids, mask = tasks.tokens(frozen, QUESTIONS[:2])
    with torch.inference_mode():
        got = tasks.vqa_ids(frozen, px, ids, mask, num_beams=3, max_new_tokens=4, min_new_tokens=4)
        concat = torch.cat([tasks.encode_image(frozen, px[:, f]) for f in range(NUM_FRAMES)], dim=1)
        states = tasks.fuse(frozen, ids, mask, concat)
        bos = torch.full((2, 1), frozen.config.text_config.bos_token_id)
        want = frozen.text_decoder.generate(input_ids=bos, encoder_hidden_states=states, encoder_attention_mask=mask,
                                            eos_token_id=frozen.config.text_config.sep_token_id,
                                            pad_token_id=frozen.config.text_config.pad_token_id, num_beams=3,
                                            max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert torch.equal(got, want)


def test_one_frame_video_is_the_image(setup):
    bb, _, table = setup
    px = _video(bb, 2, seed=4, num_frames=1)
    ids, mask = tasks.tokens(bb, QUESTIONS[:2])
    routing = table.routing(["a", "lora"])
    with torch.inference_mode():
        assert torch.equal(tasks.vqa_ids(bb, px, ids, mask, num_beams=3, max_new_tokens=4, routing=routing),
                           tasks.vqa_ids(bb, px[:, 0], ids, mask, num_beams=3, max_new_tokens=4, routing=routing))
        assert torch.equal(tasks.itc_image(bb, px, routing=routing), tasks.itc_image(bb, px[:, 0], routing=routing))


def test_mixed_adapter_video_batch_equals_each_row_alone(setup):
    bb, frozen, table = setup
    names = ["a", "lora", None, "b", "q", "pet", "a"]
    px = _video(bb, len(names), seed=5)
    ids, mask = tasks.tokens(bb, [QUESTIONS[i % 4] for i in range(len(names))])

    def run(routing, sl):
        with torch.inference_mode():
            return {"vqa": tasks.vqa_ids(bb, px[sl], ids[sl], mask[sl], num_beams=3, max_new_tokens=4,
                                         min_new_tokens=4, routing=routing),
                    "itc": tasks.itc_image(bb, px[sl], routing=routing),
                    "itm": tasks.itm_logits(bb, px[sl], ids[sl], mask[sl], routing=routing)}

    mixed = run(table.routing(names), slice(None))
    for i, name in enumerate(names):
        alone = run(table.routing([name]), slice(i, i + 1))
        assert torch.equal(mixed["vqa"][i], alone["vqa"][0]), f"row {i} ({name}): answer tokens differ"
        torch.testing.assert_close(mixed["itc"][i], alone["itc"][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mixed["itm"][i], alone["itm"][0], atol=1e-5, rtol=1e-4)
    with torch.inference_mode():  # adapters really act on video rows; rows with none are the frozen model
        ref = tasks.itm_logits(frozen, px, ids, mask)
    assert torch.equal(mixed["itm"][2], ref[2])
    assert not torch.allclose(mixed["itm"][0], ref[0], atol=1e-4)


def test_uniform_sampling_takes_segment_middles():
    assert frames_mod.sample_indices(10, 5) == [1, 3, 5, 7, 9]
    assert frames_mod.sample_indices(2, 4) == [0, 0, 1, 1]  # short videos repeat frames
    assert frames_mod.sample_indices(7, 1) == [3]
    with pytest.raises(ValueError):
        frames_mod.sample_indices(0, 4)
