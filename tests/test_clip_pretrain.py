"""Pretraining on clips (--clip-share) and vocabulary growth on --init: clip batches carry
checked positives and go through pretrain_loss as video, a mixed run resumes bit for bit, and
a backbone from before the motion words grows its tokenizer and token matrices, old rows kept."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from adapters.backbone import Backbone
from training import losses
from training.shapes import pretrain
from training.shapes.clip_world import AltTextClips, ClipShare
from training.shapes.language import vocabulary_texts
from training.shapes.motion import clip_holds
from training.shapes.world import AltTextPairs
from training.tokenizer import blip_text_config_ids, build_processor, build_tokenizer
from training.vocab_growth import grow_vocabulary

F = 4
TINY = ["--batch-pairs", "4", "--warmup", "0.25", "--ckpt-every", "2", "--threads", "2", "--probe-pairs", "0",
        "--no-progress"]
CLIPS = ["--clip-share", "0.5", "--clip-batch-pairs", "2", "--clip-frames", str(F)]


def _old_backbone(root):
    """A tiny backbone directory as pretraining wrote it before motion words existed."""
    tokenizer = build_tokenizer(vocabulary_texts(motion=False), model_max_length=40)
    processor = build_processor(tokenizer, 32)
    config = pretrain.make_config(blip_text_config_ids(tokenizer), 32, 1, 2, 32, 8)
    torch.manual_seed(0)
    Backbone.from_config(config, processor).save_pretrained(root)
    args = {"steps": 1, "batch_pairs": 4, "world_seed": 5}
    (root / "pretrain.json").write_text(json.dumps({"args": args, "train_seconds": 1.0}))
    return root


def test_clip_batches_are_sibling_clips_with_checked_positives():
    data = AltTextClips(seed=2, split="train", n_pairs=4, image_size=32, frames=F)
    processor = build_processor(build_tokenizer(vocabulary_texts()), 32)
    batch = data.collate([data[p] for p in range(4)], processor)
    assert batch["pixel_values"].shape == (8, F, 3, 32, 32) and batch["positive"].shape == (8, 8)
    assert batch["positive"].diagonal().all()
    for p in range(4):
        (a, *_), (b, _, _, desc_b, _) = data[p]
        assert bool(batch["positive"][2 * p, 2 * p + 1]) == clip_holds(desc_b, a)
    assert data[3][1][2] == AltTextClips(2, "train", 4, 32, frames=F)[3][1][2]  # deterministic stream
    # the frames of a row are its clip's frames in order: rendering twice gives the same pixels
    again = data.collate([data[0]], processor)["pixel_values"]
    assert torch.equal(again, batch["pixel_values"][:2])
    # and pretrain_loss runs them as video (5-D pixels), every term finite
    bb = Backbone.from_config(pretrain.make_config(blip_text_config_ids(processor.tokenizer), 32, 1, 2, 32, 8),
                              processor)
    out = losses.pretrain_loss(bb, batch, lambda n: None, losses.RetrievalLossConfig(),
                               torch.Generator().manual_seed(0))
    assert {"itc", "itm", "lm", "prefix_lm"} <= set(out) and torch.isfinite(out["loss"])


def test_clip_share_picks_steps_by_a_fixed_rule():
    pairs = AltTextPairs(1, "train", 16, 32)
    share = ClipShare(pairs, AltTextClips(1, "train", 16, 32, frames=F), 0.25, 2)
    assert [k for k in range(12) if share.is_clip_step(k)] == [3, 7, 11]
    assert sum(ClipShare(pairs, share.clips, 0.3, 2).is_clip_step(k) for k in range(1000)) == 300
    processor = build_processor(build_tokenizer(vocabulary_texts()), 32)
    image = share.collate_step(0, [5, 1, 2, 9], processor)
    expected = pairs.collate([pairs[i] for i in (5, 1, 2, 9)], processor)["pixel_values"]
    assert torch.equal(image["pixel_values"], expected)
    clip = share.collate_step(3, [5, 1, 2, 9], processor)
    assert clip["pixel_values"].shape == (4, F, 3, 32, 32)  # 2 clip pairs (indices 5, 1)
    assert clip["texts"] == [r[2] for i in (5, 1) for r in share.clips[i]]


def _state(out):
    return load_file(str(out / "model.safetensors"))


def test_mixed_image_and_clip_pretraining_resumes_exactly(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    args = ["--world-seed", "5", "--hidden", "32", "--layers", "1", "--heads", "2", "--image-size", "32",
            "--steps", "4", *TINY, *CLIPS]
    pretrain.main(["--out", str(whole), *args])
    assert pretrain.main(["--out", str(split), *args, "--stop-after", "3"]) == {"stopped_at": 3}
    pretrain.main(["--out", str(split), *args, "--resume"])
    a, b = _state(whole), _state(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "whole.ckpt" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [4]  # steps 1 and 3 (0-based) were clip batches
    plain = tmp_path / "plain"  # the same flags without clips train other weights: clip steps did run
    pretrain.main(["--out", str(plain), *args[:-len(CLIPS)]])
    assert not all(torch.equal(a[k], _state(plain)[k]) for k in a)


def test_vocabulary_growth_keeps_old_rows_and_logits(tmp_path):
    bb = Backbone.from_dirs(_old_backbone(tmp_path / "old"))
    tok = bb.processor.tokenizer
    old_vocab, n_old = tok.get_vocab(), len(tok)
    assert tok.tokenize("moves") != ["moves"]  # split into pieces before growth
    enc = tok(["two red circles left of one blue square"], return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    embeds = torch.randn(1, 17, 32)
    with torch.no_grad():
        enc_before = bb.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        logits_before = bb.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=embeds).logits
    words = {"enc": bb.text_encoder.embeddings.word_embeddings.weight.detach().clone(),
             "dec": bb.text_decoder.bert.embeddings.word_embeddings.weight.detach().clone()}
    added = grow_vocabulary(bb, vocabulary_texts())
    tok = bb.processor.tokenizer
    assert {"moves", "appears", "turns", "leftwards"} <= set(added) and len(tok) == n_old + len(added)
    assert all(tok.get_vocab()[t] == i for t, i in old_vocab.items())  # old ids kept
    assert tok.tokenize("the red circle moves left") == ["the", "red", "circle", "moves", "left"]
    enc_w = bb.text_encoder.embeddings.word_embeddings.weight
    dec_w = bb.text_decoder.bert.embeddings.word_embeddings.weight
    head = bb.text_decoder.cls.predictions
    assert enc_w.shape == dec_w.shape == (len(tok), 32) and head.bias.shape == (len(tok),)
    assert torch.equal(enc_w[:n_old], words["enc"]) and torch.equal(dec_w[:n_old], words["dec"])
    assert torch.allclose(enc_w[n_old:], words["enc"].mean(0).expand(len(added), -1))
    assert head.decoder.weight is dec_w and head.decoder.bias is head.bias  # still tied
    assert bb.config.text_config.vocab_size == len(tok)
    with torch.no_grad():
        assert torch.equal(bb.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state, enc_before)
        logits = bb.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=embeds).logits
    assert logits.shape[-1] == len(tok) and torch.allclose(logits[..., :n_old], logits_before, atol=1e-6)
    assert grow_vocabulary(bb, vocabulary_texts()) == []  # nothing left to add
    bb.save_pretrained(tmp_path / "grown")
    assert Backbone.from_dirs(tmp_path / "grown").fingerprint == bb.fingerprint  # saves and reloads whole



@pytest.mark.parametrize("resume", [False, True])
def test_init_grows_an_old_backbone_and_resumes(tmp_path, resume):
    old = _old_backbone(tmp_path / "old")
    out = tmp_path / "new"
    args = ["--out", str(out), "--init", str(old), "--world-seed", "5", "--steps", "2", *TINY, *CLIPS]
    if resume:
        assert pretrain.main(args + ["--stop-after", "1"]) == {"stopped_at": 1}
        record = pretrain.main(args + ["--resume"])
    else:
        record = pretrain.main(args + ["--probe-pairs", "4"])
        clips = record["probe"]["clips"]  # the final probe also scores sibling clips, by event
        assert clips["pairs"] > 0 and set(clips["by_event"]) <= {"move", "appear", "turn"}
        assert 0 <= clips["itm"] <= 100 and 0 <= clips["lm_canonical"] <= 100
    # a mid-run probe reads the grown checkpoint against the (smaller) --init directory
    from training.shapes.probe import from_checkpoint
    assert from_checkpoint(old, tmp_path / "new.ckpt" / "last.pt").fingerprint == Backbone.from_dirs(out).fingerprint
    grown = record["stages"][-1]["grown_words"]
    assert record["args"]["clip_share"] == 0.5
    assert "moves" in grown and "grown_words" not in record["stages"][0]
    bb = Backbone.from_dirs(out)
    assert bb.processor.tokenizer.tokenize("moves") == ["moves"]
    old_bb = Backbone.from_dirs(old)
    assert bb.config.text_config.vocab_size == len(old_bb.processor.tokenizer) + len(grown)
    if resume:
        whole = tmp_path / "whole"
        pretrain.main(["--out", str(whole), *args[2:]])
        a, b = _state(whole), _state(out)
        assert all(torch.equal(a[x], b[x]) for x in a)


def test_without_clips_the_vocabulary_is_the_image_worlds(tmp_path):
    """Default flags keep today's tokenizer: a fresh run builds it, an --init run keeps it."""
    old = _old_backbone(tmp_path / "old")
    record = pretrain.main(["--out", str(tmp_path / "cont"), "--init", str(old), "--world-seed", "5", "--steps", "1",
                            *TINY])
    assert "grown_words" not in record["stages"][-1]
    assert Backbone.from_dirs(tmp_path / "cont").processor.tokenizer.get_vocab() == \
        Backbone.from_dirs(old).processor.tokenizer.get_vocab()
    args = pretrain.parse_args(["--out", "x"])
    assert pretrain.build_backbone(args).processor.tokenizer.get_vocab() == \
        build_tokenizer(vocabulary_texts(motion=False)).get_vocab()
