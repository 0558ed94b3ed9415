"""Loading backbone directories: our own layout, the original BLIP checkpoint via the
converter, and clear errors naming the file when something is missing or corrupt."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from adapters import tasks
from adapters.backbone import Backbone
from adapters.backbone.loading import read_weights
from adapters.backbone.convert_original import main as convert_main
from adapters.errors import BackboneLoadError, TaskUnavailableError
from tests.tiny import random_images


@pytest.fixture(scope="module")
def saved(tmp_path_factory, config, processor):
    torch.manual_seed(0)
    bb = Backbone.from_config(config, processor)
    path = bb.save_pretrained(tmp_path_factory.mktemp("own") / "bb")
    return bb, path


def test_own_directory_round_trips(saved):
    bb, path = saved
    loaded = Backbone.from_dirs(path)
    assert loaded.tasks == {"caption", "vqa", "retrieve"}
    assert loaded.fingerprint == bb.fingerprint
    for key, value in bb.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not any(p.requires_grad for p in loaded.parameters())


# the original salesforce/BLIP names of the vision tensors, written out independently of the converter
def _to_original_key(key: str) -> str:
    fixed = {
        "vision_model.embeddings.class_embedding": "visual_encoder.cls_token",
        "vision_model.embeddings.position_embedding": "visual_encoder.pos_embed",
    }
    if key in fixed:
        return fixed[key]
    key = key.replace("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj.")
    key = key.replace("vision_model.post_layernorm.", "visual_encoder.norm.")
    key = re.sub(r"vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.", r"visual_encoder.blocks.\1.norm1.", key)
    key = re.sub(r"vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.", r"visual_encoder.blocks.\1.norm2.", key)
    key = re.sub(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.",
                 r"visual_encoder.blocks.\1.attn.proj.", key)
    key = re.sub(r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"visual_encoder.blocks.\1.attn.qkv.", key)
    key = re.sub(r"vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp.", key)
    return key


def test_original_checkpoint_converts_loads_and_matches(saved, tmp_path, processor):
    bb, _ = saved
    state = {_to_original_key(k): v.clone() for k, v in bb.state_dict().items()
             if k != "text_decoder.cls.predictions.decoder.weight"}  # the original stores the tied copy once
    assert "visual_encoder.blocks.0.attn.qkv.weight" in state
    # pretraining-only state the converter must drop
    state["visual_encoder_m.pos_embed"] = torch.zeros(1)
    state["text_proj_m.weight"] = torch.zeros(1)
    state["image_queue"] = torch.zeros(4, 8)
    state["temp"] = torch.tensor(0.07)
    ckpt = tmp_path / "model_base.pth"
    torch.save({"model": state}, ckpt)
    tok_dir = tmp_path / "bert"
    processor.tokenizer.save_pretrained(tok_dir)  # already holds [DEC]/[ENC], as BLIP's saved tokenizers do

    out = tmp_path / "converted"
    assert convert_main(["--checkpoint", str(ckpt), "--tokenizer", str(tok_dir), "--out", str(out),
                         "--vision-heads", "4", "--text-heads", "4"]) == 0
    loaded = Backbone.from_dirs(out)
    assert loaded.tasks == {"caption", "vqa", "retrieve"}
    assert loaded.fingerprint == bb.fingerprint
    pv = tasks.pixels(bb, random_images(2))
    ids, mask = tasks.tokens(bb, ["a red circle", "two green triangles"])
    with torch.inference_mode():
        assert torch.equal(tasks.caption_ids(loaded, pv, num_beams=2, max_new_tokens=5),
                           tasks.caption_ids(bb, pv, num_beams=2, max_new_tokens=5))
        torch.testing.assert_close(tasks.itm_logits(loaded, pv, ids, mask), tasks.itm_logits(bb, pv, ids, mask),
                                   atol=1e-6, rtol=0)


def test_blip_tokens_are_appended_to_a_plain_bert_vocabulary(tmp_path):
    from adapters.backbone.convert_original import blip_tokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = blip_tokenizer(tmp_path)
    assert len(tok) == len(words) + 2  # like bert-base-uncased 30522 -> BLIP's 30524
    assert tok.bos_token == "[DEC]" and tok.convert_tokens_to_ids("[DEC]") == len(words)
    assert tok.convert_tokens_to_ids("[ENC]") == len(words) + 1
    assert tok("a red circle").input_ids == [2, 5, 6, 7, 3]


def test_converter_refuses_a_pickle_with_objects(tmp_path, capsys):
    ckpt = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "args": argparse_namespace()}, ckpt)
    assert convert_main(["--checkpoint", str(ckpt), "--tokenizer", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "weights-only" in capsys.readouterr().err


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=1e-4)  # the original checkpoints' extra objects are refused by weights_only


@pytest.mark.parametrize("victim", ["config.json", "model.safetensors", "tokenizer.json", "processor_config.json"])
def test_missing_file_is_named(saved, tmp_path, victim):
    _, path = saved
    broken = tmp_path / "bb"
    shutil.copytree(path, broken)
    (broken / victim).unlink()
    with pytest.raises(BackboneLoadError) as err:
        Backbone.from_dirs(broken)
    assert victim.split(".")[0] in str(err.value) or "weights" in str(err.value)


@pytest.mark.parametrize("victim", ["config.json", "model.safetensors", "tokenizer.json"])
def test_corrupt_file_is_named(saved, tmp_path, victim):
    _, path = saved
    broken = tmp_path / "bb"
    shutil.copytree(path, broken)
    data = (broken / victim).read_bytes()
    (broken / victim).write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(BackboneLoadError, match=re.escape(victim)):
        Backbone.from_dirs(broken)


def test_wrong_shapes_are_refused(saved, tmp_path):
    _, path = saved
    broken = tmp_path / "bb"
    shutil.copytree(path, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 48
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BackboneLoadError, match="does not match config.json"):
        Backbone.from_dirs(broken)


def test_partial_backbone_says_which_tasks(saved, tmp_path):
    _, path = saved
    state, _ = read_weights(path)
    partial = tmp_path / "cap_only"
    shutil.copytree(path, partial)
    from safetensors.torch import save_file

    save_file({k: v for k, v in state.items() if k.startswith(("vision_model.", "text_decoder."))},
              str(partial / "model.safetensors"))
    bb = Backbone.from_dirs(partial)
    assert bb.tasks == {"caption"}
    with pytest.raises(TaskUnavailableError, match=r"cannot serve 'retrieve'.*lacks \['itm_head', 'text_encoder'"):
        bb.require("retrieve")


def test_not_a_directory(tmp_path):
    with pytest.raises(BackboneLoadError, match="not a directory"):
        Backbone.from_dirs(tmp_path / "nope")
