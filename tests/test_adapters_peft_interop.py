"""PEFT LoRA both ways, against peft itself on a tiny transformers BLIP:

- in: a LoRA directory made with peft (`get_peft_model` on `BlipForQuestionAnswering`,
  q/k/v targets, `save_pretrained`) loads into our table and answers exactly as peft's
  model does, alone and in a mixed batch beside VCRA, VCRA+QASN and VL-PET rows;
- out: our VCRA (no QASN), VeRA and LoRA adapters written as peft LoRA directories load
  with `PeftModel.from_pretrained` and give our outputs within 1e-5; kinds with no LoRA
  form (QASN, VL-PET) are refused."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import BlipForQuestionAnswering

from adapters import AdapterFileError, AdapterTable, create_adapter, routed, tasks
from adapters.backbone import Backbone
from adapters.runtime.peft_interop import export_peft_lora, load_peft_lora
from tests.adapter_helpers import randomize
from tests.tiny import random_images

QUESTION = "what colour is the circle ?"


@pytest.fixture(scope="module")
def world(tmp_path_factory, config, processor):
    """A tiny transformers BLIP VQA model on disk, our Backbone of the same weights, and a
    peft LoRA directory made on it (random A and B: init_lora_weights=False)."""
    root = tmp_path_factory.mktemp("peft")
    torch.manual_seed(7)
    hf = BlipForQuestionAnswering(config).eval()
    hf.save_pretrained(root / "blip")
    processor.save_pretrained(root / "blip")
    torch.manual_seed(8)
    peft_model = get_peft_model(copy.deepcopy(hf), LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "query", "key", "value"],
                                                             init_lora_weights=False, lora_dropout=0.0))
    with torch.no_grad():  # peft leaves B at 0 only with init_lora_weights=True; make both sizeable
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(root / "peft-lora")
    bb = Backbone.from_dirs(root / "blip")
    return root, hf, peft_model.eval(), bb


def _inputs(bb, n=3, seed=3):
    px = tasks.pixels(bb, random_images(n, seed=seed))
    ids, mask = tasks.tokens(bb, [QUESTION] * n)  # one length: transformers' VQA ignores the text mask
    return px, ids, mask


def _peft_states(model, px, ids, mask):
    core = model.base_model.model
    image = core.vision_model(pixel_values=px)[0]
    return core.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image,
                             encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long)).last_hidden_state


def test_peft_directory_is_what_peft_writes(world):
    root, *_ = world
    config = json.loads((root / "peft-lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert (root / "peft-lora" / "adapter_model.safetensors").stat().st_size > 0


@pytest.mark.parametrize("num_beams", [1, 3])
def test_peft_lora_loads_and_equals_peft(world, num_beams):
    root, hf, peft_model, bb = world
    adapter = load_peft_lora(root / "peft-lora", bb, task="vqa")
    assert adapter.kind == "lora" and adapter.config.scaling == 2.0
    table = AdapterTable(bb, capacity=2)
    table.insert("from-peft", adapter)
    px, ids, mask = _inputs(bb)
    with torch.inference_mode():
        ours = tasks.vqa_ids(bb, px, ids, mask, num_beams=num_beams, max_new_tokens=5, min_new_tokens=5,
                             routing=table.routing(["from-peft"] * 3))
        theirs = peft_model.generate(input_ids=ids, pixel_values=px, num_beams=num_beams, max_new_tokens=5,
                                     min_new_tokens=5)
        plain = hf.generate(input_ids=ids, pixel_values=px, num_beams=num_beams, max_new_tokens=5, min_new_tokens=5)
        with routed(table.routing(["from-peft"] * 3)):
            states = tasks.question_states(bb, px, ids, mask)
        peft_states = _peft_states(peft_model, px, ids, mask)
    assert torch.equal(ours, theirs)
    assert not torch.equal(theirs, plain)  # the LoRA really changes the answers
    torch.testing.assert_close(states, peft_states, atol=1e-5, rtol=1e-5)


def test_peft_lora_in_a_mixed_batch(world):
    _, _, _, bb = world
    root = world[0]
    table = AdapterTable(bb, capacity=8, max_rank=8)
    table.insert("from-peft", load_peft_lora(root / "peft-lora", bb, task="vqa"))
    for name, kind, options in (("vcra", "vcra", {"qasn": False}), ("vcra-qasn", "vcra-qasn", {}),
                                ("vlpet", "vl-pet-middle-x", {})):
        adapter = create_adapter(kind, bb, task="vqa", rank=4, seed=2, **options)
        randomize(adapter, seed=len(name))
        table.insert(name, adapter)
    names = ["from-peft", "vcra", None, "vlpet", "from-peft", "vcra-qasn"]
    px = tasks.pixels(bb, random_images(len(names), seed=5))
    ids, mask = tasks.tokens(bb, [QUESTION, "is there a star ?"] * 3)  # padded: the mask keeps rows apart

    def run(routing, sl):
        with torch.inference_mode():
            return (tasks.vqa_ids(bb, px[sl], ids[sl], mask[sl], num_beams=3, max_new_tokens=4, min_new_tokens=4,
                                  routing=routing),
                    tasks.caption_ids(bb, px[sl], num_beams=3, max_new_tokens=4, min_new_tokens=4, routing=routing),
                    torch.stack(tasks.vqa_rank(bb, px[sl], ids[sl], mask[sl], [["red", "yes"]] * len(px[sl]),
                                               routing=routing)))

    mixed = run(table.routing(names), slice(None))
    for i, name in enumerate(names):
        alone = run(table.routing([name]), slice(i, i + 1))
        assert torch.equal(mixed[0][i], alone[0][0]) and torch.equal(mixed[1][i], alone[1][0]), (i, name)
        torch.testing.assert_close(mixed[2][i], alone[2][0], atol=1e-5, rtol=1e-4)


def test_bad_peft_directories_are_refused(world, tmp_path):
    root, _, _, bb = world
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((root / "peft-lora" / "adapter_config.json").read_text())
    (bad / "adapter_model.safetensors").write_bytes((root / "peft-lora" / "adapter_model.safetensors").read_bytes())
    for edit, message in (({"use_dora": True}, "use_dora=True is not supported"), ({"peft_type": "IA3"}, "only LORA"),
                          ({"r": 8}, "expected (8, ")):
        (bad / "adapter_config.json").write_text(json.dumps({**config, **edit}))
        with pytest.raises(AdapterFileError, match=message.replace("(", r"\(")):
            load_peft_lora(bad, bb, task="vqa")


@pytest.mark.parametrize("kind, options", [("vcra", {"qasn": False}), ("vera", {"qasn": False}), ("lora", {}),
                                           ("vcra", {"qasn": False, "train_ab": True})])
def test_ours_export_to_peft_and_match(world, tmp_path, kind, options):
    root, _, _, bb = world
    adapter = create_adapter(kind, bb, task="vqa", rank=4, seed=3, **options)
    randomize(adapter, seed=11)
    out = export_peft_lora(adapter, tmp_path / "exported", bb)
    hf = BlipForQuestionAnswering.from_pretrained(root / "blip").eval()
    peer = PeftModel.from_pretrained(hf, out).eval()
    px, ids, mask = _inputs(bb, seed=4)
    with torch.inference_mode():
        ours = tasks.vqa_ids(bb, px, ids, mask, num_beams=3, max_new_tokens=5, min_new_tokens=5,
                             routing=adapter.routing())
        theirs = peer.generate(input_ids=ids, pixel_values=px, num_beams=3, max_new_tokens=5, min_new_tokens=5)
        with routed(adapter.routing()):
            states = tasks.question_states(bb, px, ids, mask)
        peer_states = _peft_states(peer, px, ids, mask)
        frozen_states = tasks.question_states(bb, px, ids, mask)
    assert not torch.allclose(states, frozen_states, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(states, peer_states, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("kind", ["vcra-qasn", "vl-pet-large"])
def test_kinds_without_a_lora_form_are_refused(world, tmp_path, kind):
    _, _, _, bb = world
    with pytest.raises(ValueError, match="no LoRA form"):
        export_peft_lora(create_adapter(kind, bb, task="vqa", rank=4), tmp_path / "x", bb)


def test_command_line_round_trip(world, tmp_path):
    """peft dir -> our adapter file (served by the table) -> peft dir again: peft's model on
    the re-exported directory equals peft's model on the original."""
    from adapters.runtime import peft_interop

    root, hf, peft_model, bb = world
    ours = tmp_path / "from-peft.safetensors"
    peft_interop.main(["import", str(root / "peft-lora"), "--task", "vqa", "--backbone", str(root / "blip"),
                       "--out", str(ours)])
    meta = AdapterTable(bb, capacity=1).load("from-peft", ours)
    assert meta.kind == "lora" and meta.recipe["source"] == "peft"
    peft_interop.main(["export", str(ours), "--backbone", str(root / "blip"), "--out", str(tmp_path / "again")])
    again = PeftModel.from_pretrained(BlipForQuestionAnswering.from_pretrained(root / "blip").eval(),
                                      tmp_path / "again").eval()
    px, ids, mask = _inputs(bb, seed=6)
    with torch.inference_mode():
        torch.testing.assert_close(_peft_states(again, px, ids, mask), _peft_states(peft_model, px, ids, mask),
                                   atol=1e-5, rtol=1e-5)
