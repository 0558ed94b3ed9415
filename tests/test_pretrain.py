"""A tiny pretraining run writes a backbone directory that loads everywhere, and
--resume continues bit-for-bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor

from adapters import tasks
from adapters.backbone import PARTS, Backbone
from training import pretrain, world
from training.tokenizer import blip_text_config_ids

TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--batch-size", "8", "--warmup", "2",
        "--ckpt-every", "2", "--threads", "2"]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    world.main(["--out", str(root), "--seed", "5", "--n", "60", "--size", "32"])
    return root


def _run(world_dir, out, *extra):
    return pretrain.main(["--world", str(world_dir), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def backbone_dir(world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "blip-tiny"
    record = _run(world_dir, out, "--steps", "4", "--eval-limit", "6")
    assert set(record["test"]) == {"split", "images", "pretrain", "downstream"}
    return out


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


def test_loads_as_backbone_and_runs_every_task(backbone_dir, world_dir):
    bb = Backbone.from_dirs(backbone_dir)
    assert bb.tasks == {"caption", "vqa", "retrieve"}
    from PIL import Image

    pv = tasks.pixels(bb, [Image.open(world_dir / "images" / "pre_000000.png")])
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


def test_resume_continues_exactly(world_dir, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    _run(world_dir, whole, "--steps", "4", "--no-eval")
    assert _run(world_dir, split, "--steps", "4", "--no-eval", "--stop-after", "2") == {"stopped_at": 2}
    assert not (split / "model.safetensors").exists()
    _run(world_dir, split, "--steps", "4", "--no-eval", "--resume")
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(split.parent / "split.ckpt" / "last.pt", weights_only=False)
    assert state["step"] == 4 and [h["step"] for h in state["history"]] == [4]  # every 50 steps and the last
