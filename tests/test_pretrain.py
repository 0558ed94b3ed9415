"""A tiny streamed pretraining run (training.shapes.pretrain through training.loop) writes a
backbone directory that loads everywhere, its batches carry checked positives, and
--resume continues bit-for-bit."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

from adapters import tasks
from adapters.backbone import PARTS, Backbone
from training.shapes import pretrain
from training.shapes.language import holds
from training.shapes.world import AltTextPairs
from training.tokenizer import blip_text_config_ids, build_processor, build_tokenizer

TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--batch-pairs", "4", "--warmup", "0.25",
        "--ckpt-every", "2", "--threads", "2", "--image-size", "32", "--no-progress"]


def _run(out, *extra):
    return pretrain.main(["--out", str(out), "--world-seed", "5", *TINY, *extra])


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "blip-tiny"
    record = _run(out, "--steps", "4", "--probe-pairs", "8")
    assert {"itc", "itm", "lm", "lm_canonical", "itm_acc", "by_attribute", "position_r2", "where_prefix"} <= set(record["probe"])
    assert record["probe"]["position_r2"] <= 1
    assert 0 <= record["probe"]["where_prefix"] <= 100
    assert record["last"]["step"] == 4 and record["train_seconds"] > 0
    return out


def test_batches_are_sibling_pairs_with_checked_positives():
    data = AltTextPairs(seed=2, split="train", n_pairs=8, image_size=32)
    processor = build_processor(build_tokenizer(pretrain.vocabulary_texts()), 32)
    batch = data.collate([data[p] for p in range(8)], processor)
    assert batch["pixel_values"].shape == (16, 3, 32, 32) and batch["positive"].shape == (16, 16)
    assert batch["positive"].diagonal().all()
    for p in range(8):  # a sibling's caption is (almost always) false of its twin
        a, b = data[p]
        assert bool(batch["positive"][2 * p, 2 * p + 1]) == holds(b[3], a[0])
    assert (~batch["positive"]).sum() > 16 * 12  # plenty of negatives
    assert data[3][0][2] == AltTextPairs(2, "train", 8, 32)[3][0][2]  # deterministic stream


def test_prefix_lm_splits_each_caption_into_fused_prefix_and_decoded_rest():
    data = AltTextPairs(seed=2, split="train", n_pairs=8, image_size=32)
    tok = build_processor(build_tokenizer(pretrain.vocabulary_texts()), 32).tokenizer
    rows = [r for p in range(8) for r in data[p]]
    batch = data.collate([data[p] for p in range(8)], build_processor(tok, 32))
    cuts = [r[4] for r in rows]
    assert len(set(cuts)) > 1 and all(0 <= c < len(r[2].split()) for r, c in zip(rows, cuts))
    for i, row in enumerate(rows):
        prefix = tok.decode(batch["prefix_ids"][i][batch["prefix_mask"][i].bool()], skip_special_tokens=True)
        rest = tok.decode(batch["suffix_ids"][i][batch["suffix_mask"][i].bool()], skip_special_tokens=True)
        assert rest, row[2]  # the decoder always has words to produce
        assert tok.decode(tok(row[2]).input_ids, skip_special_tokens=True) == " ".join(w for w in (prefix, rest) if w)


def test_backbone_directory_layout(backbone_dir):
    names = {p.name for p in backbone_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "pretrain.json"} <= names
    state = load_file(str(backbone_dir / "model.safetensors"))
    assert {k.split(".")[0] for k in state} == set(PARTS)
    assert any(k.startswith("text_decoder.bert.") for k in state) and any(k.startswith("text_decoder.cls.") for k in state)
    assert all(v.dtype == torch.float32 for v in state.values())
    config = BlipConfig.from_pretrained(backbone_dir, local_files_only=True)
    processor = BlipProcessor.from_pretrained(backbone_dir, local_files_only=True)
    for key, value in blip_text_config_ids(processor.tokenizer).items():
        assert getattr(config.text_config, key) == value, key
    assert config.vision_config.hidden_size == config.text_config.hidden_size == 32
    record = json.loads((backbone_dir / "pretrain.json").read_text())
    assert record["args"]["steps"] == 4 and record["train_seconds"] > 0


def test_loads_as_backbone_and_runs_every_task(backbone_dir):
    bb = Backbone.from_dirs(backbone_dir)
    assert bb.tasks == {"caption", "vqa", "retrieve"}
    image = AltTextPairs(seed=5, split="val", n_pairs=1, image_size=32)[0][0][1]
    pv = tasks.pixels(bb, [image])
    with torch.inference_mode():
        assert isinstance(tasks.caption(bb, pv, max_new_tokens=5)[0], str)
        assert tasks.itc_image(bb, pv).shape == (1, bb.config.image_text_hidden_size)
        assert tasks.itm_scores(bb, pv, *tasks.tokens(bb, ["a red circle"])).shape == (1,)


def test_loads_with_transformers_caption_class(backbone_dir):
    model = BlipForConditionalGeneration.from_pretrained(backbone_dir, local_files_only=True)
    ours = load_file(str(backbone_dir / "model.safetensors"))
    theirs = model.state_dict()
    for key in theirs:
        if key in ours:
            assert torch.equal(theirs[key], ours[key]), key
    assert set(theirs) - set(ours) <= {"text_decoder.cls.predictions.decoder.weight",
                                       "text_decoder.cls.predictions.decoder.bias"}


def test_resume_continues_exactly(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    _run(whole, "--steps", "4", "--probe-pairs", "0")
    assert _run(split, "--steps", "4", "--probe-pairs", "0", "--stop-after", "3") == {"stopped_at": 3}
    assert not (split / "model.safetensors").exists()
    _run(split, "--steps", "4", "--probe-pairs", "0", "--resume")
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (split.parent / "split.ckpt" / "log.jsonl").read_text().splitlines()]
    assert {"event": "resume", "global_step": 3} in log


def test_init_continues_from_a_backbone_on_the_streams_next_pairs(backbone_dir, tmp_path):
    out = tmp_path / "continued"
    record = pretrain.main(["--out", str(out), "--init", str(backbone_dir), "--world-seed", "5", "--steps", "2",
                            "--batch-pairs", "4", "--ckpt-every", "2", "--threads", "2", "--probe-pairs", "0",
                            "--no-progress"])
    first = json.loads((backbone_dir / "pretrain.json").read_text())
    assert [st["pairs"] for st in record["stages"]] == [4 * 4, 2 * 4]  # the init's 4 steps x 4 pairs, then ours
    assert record["stages"][0]["args"] == first["args"]
    # the fixture's run added the sin-cos grid (default 0.5); a continued run adds none unless asked
    assert first["args"]["sincos_positions"] == 0.5 and record["args"]["sincos_positions"] == 0.0
    assert record["train_seconds_total"] == pytest.approx(first["train_seconds"] + record["train_seconds"], abs=0.2)
    # the init's weights were the start (not a fresh init): sizes are the init's, not the CLI defaults
    assert json.loads((out / "config.json").read_text())["vision_config"]["hidden_size"] == 32
    # the stream of the continued run starts where the init's ended
    assert AltTextPairs(5, "train", 8, 32, start=16)[0][0][2] == AltTextPairs(5, "train", 32, 32)[16][0][2]


def test_sincos_positions_give_every_patch_a_distinct_position_of_known_norm(backbone_dir):
    grid = pretrain.sincos_grid(4, 32)
    assert grid.shape == (16, 32)
    assert torch.allclose(grid.norm(dim=-1), torch.full((16,), 4.0))  # sqrt(dim / 2)
    assert torch.cdist(grid, grid).add(torch.eye(16)).min() > 0.1  # no two patches share a position
    bb = Backbone.from_dirs(backbone_dir)
    before = bb.vision_model.embeddings.position_embedding.detach().clone()
    pretrain.add_sincos_positions(bb, 0.5)
    after = bb.vision_model.embeddings.position_embedding.detach()
    assert torch.equal(after[0, 0], before[0, 0])  # CLS keeps its embedding
    assert torch.allclose(after[0, 1:] - before[0, 1:], 0.5 * pretrain.sincos_grid(4, 32), atol=1e-6)  # 32 px / patch 8
    assert bb.fingerprint != Backbone.from_dirs(backbone_dir).fingerprint


def test_probe_reads_a_pretraining_checkpoint(backbone_dir):
    from training.shapes.probe import from_checkpoint
    ckpt = backbone_dir.parent / (backbone_dir.name + ".ckpt") / "last.pt"  # the fixture run's last step
    bb = from_checkpoint(backbone_dir, ckpt)
    saved = Backbone.from_dirs(backbone_dir)  # written from the same final weights
    assert bb.fingerprint == saved.fingerprint


def test_position_r2_sees_positions_only_when_the_vit_keeps_them(backbone_dir):
    from training.shapes.probe import position_r2
    images = [r[1] for p in range(12) for r in AltTextPairs(seed=5, split="val", n_pairs=12, image_size=32)[p]]
    blind = Backbone.from_dirs(backbone_dir)
    with torch.no_grad():
        blind.vision_model.embeddings.position_embedding.zero_()  # no position embedding at all
    strong = Backbone.from_dirs(backbone_dir)
    pretrain.add_sincos_positions(strong, 5.0)  # positions of norm 20: they dominate every token
    assert position_r2(strong, images) > 0.9
    assert position_r2(strong, images) > position_r2(blind, images) + 0.2


def test_sibling_negatives_replace_drawn_ones_only_where_the_sibling_is_a_negative():
    from training.losses import sibling_negatives

    drawn = torch.tensor([5, 4, 7, 6, 1, 0])
    sibling = torch.arange(6) ^ 1
    allowed = torch.tensor([True, False, True, True, False, True])
    g = torch.Generator().manual_seed(0)
    assert sibling_negatives(drawn, sibling, allowed, 1.0, g).tolist() == [1, 4, 3, 2, 1, 4]
    assert torch.equal(sibling_negatives(drawn, sibling, allowed, 0.0, g), drawn)
    half = torch.stack([sibling_negatives(drawn, sibling, torch.ones(6, dtype=torch.bool), 0.5, g) for _ in range(400)])
    assert 0.4 < (half == sibling).float().mean().item() < 0.6


def test_pretrain_with_sibling_negatives_records_them_for_the_card(tmp_path):
    record = _run(tmp_path / "bb", "--sibling-negatives", "1")
    assert record["args"]["sibling_negatives"] == 1.0
    assert all(math.isfinite(v) for v in record["last"].values() if isinstance(v, float))
    from training.shapes.card import _flags

    assert "--sibling-negatives 1.0" in _flags(record["args"])
