"""What a backbone knows of the shapes world: sibling-pair probes of ITC, ITM and LM.

    python -m training.shapes.probe --backbone models/blip-shapes --pairs 300 --sheet /tmp/sheet.png
    python -m training.shapes.probe --backbone models/blip-shapes --checkpoint /tmp/bb.ckpt/last.pt  # mid-run
    python -m training.shapes.probe --backbone models/blip-shapes --clip-pairs 100   # + sibling clips

A sibling pair is two scenes differing in one attribute (colour, shape, count, size or
the relation), each with an alt-text caption false of the other scene. A backbone
that grounds the attribute scores its own caption above the sibling's. Per part:
- itc: cosine(image, own caption) > cosine(image, sibling's caption)
- itm: P(match | image, own) > P(match | image, sibling's); itm_acc: P > 0.5 is right on all four
- lm: log-likelihood of the own caption after "a picture of " > the sibling's
- lm_canonical: the same with the downstream canonical captions ("two red circles left
  of one blue square"), a format never pretrained: what an adapter can re-route.
Each as % of pairs, overall and by the attribute that differs. Chance is 50%.
- where_prefix (not a pair score): on the two-group scenes, a group's noun phrase ("two red
  circles") fused with the image, and the decoder reading those states scores "on the left",
  "on the right", "at the top", "at the bottom": % where the group's own side wins (chance 25,
  the layout axis alone 50). It is BLIP's VQA path (question fused -> decoder) asked "where"
  with no training, what pretrain --spatial-cuts teaches.

`probe_clips` does the same on sibling clips (training.shapes.clip_world.AltTextClips), by
the event that differs (move siblings are the same clip played backwards: order-blind
video transfer sits at 50% there by construction, tests/test_clips.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from adapters import tasks
from adapters.backbone import Backbone
from training.shapes.language import COUNT_WORDS, PROMPT, SIDE_WORDS, canonical_captions, holds, vocabulary_texts
from training.shapes.world import AltTextPairs, difference  # the stream pretraining reads
from training.vocab_growth import grow_vocabulary


def caption_log_likelihood(bb, image_embeds: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Sum of log p(text tokens + [SEP] | image, prompt) per row: (N,)."""
    tok = bb.processor.tokenizer([PROMPT + t for t in texts], padding="longest", return_tensors="pt")
    ids, mask = tok.input_ids.clone(), tok.attention_mask
    ids[:, 0] = bb.config.text_config.bos_token_id
    logits = bb.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                             encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long)).logits
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (N, L-1)
    scored = mask[:, 1:].clone()
    scored[:, : len(bb.processor.tokenizer(PROMPT).input_ids) - 2] = 0  # prompt words are given, not scored
    return (logp * scored).sum(-1)


@torch.inference_mode()
def _pair_scores(bb, pv: torch.Tensor, texts: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """Per image (or clip) i of pixels `pv` (B, 3, H, W) or (B, F, 3, H, W), one encoding:
    ITC, ITM and LM scores of texts["own"][i] and texts["other"][i], and the LM score of
    texts["canon_own"][i] and texts["canon_other"][i]."""
    embeds = tasks.encode_image(bb, pv)
    img = tasks.image_features(bb, embeds)
    out = {}
    for name in ("own", "other"):
        ids, mask = tasks.tokens(bb, texts[name])
        txt = tasks.text_features(bb, tasks.encode_text(bb, ids, mask))
        fused = tasks.fuse(bb, ids, mask, embeds)
        out[f"itc_{name}"] = (img * txt).sum(-1).float().numpy()
        out[f"itm_{name}"] = bb.itm_head(fused[:, 0]).float().softmax(-1)[:, 1].numpy()
        out[f"lm_{name}"] = caption_log_likelihood(bb, embeds, texts[name]).numpy()
    for name in ("canon_own", "canon_other"):
        out[name] = caption_log_likelihood(bb, embeds, texts[name]).numpy()
    return out


def _score_siblings(bb, data, n_pairs: int, batch_pairs: int, *, holds_fn, kind_of, canonical, to_pixels):
    """Score the sibling pairs of `data` (AltTextPairs or AltTextClips) whose texts are each
    false of the other (`holds_fn`) -> (score rows, the kind of difference per row, every
    drawn pair). `canonical(x)` gives x's downstream caption, `to_pixels` batches pixels."""
    rows, kinds, drawn = defaultdict(list), [], []
    for start in range(0, n_pairs, batch_pairs):
        pairs = [data[p] for p in range(start, min(n_pairs, start + batch_pairs))]
        drawn += pairs
        keep = [(a, b) for a, b in pairs if not holds_fn(b[3], a[0]) and not holds_fn(a[3], b[0])]
        if not keep:
            continue
        pixels, texts = [], defaultdict(list)
        for a, b in keep:
            kinds += [kind_of(a[0], b[0])] * 2
            for x, y in ((a, b), (b, a)):  # each pair scored both ways
                pixels.append(x[1])
                texts["own"].append(x[2])
                texts["other"].append(y[2])
                texts["canon_own"].append(canonical(x[0]))
                texts["canon_other"].append(canonical(y[0]))
        for k, v in _pair_scores(bb, to_pixels(bb, pixels), texts).items():
            rows[k].append(v)
    return rows, kinds, drawn


def probe(bb: Backbone, world_seed: int, split: str = "val", n_pairs: int = 300, *, batch_pairs: int = 32,
          sheet: str | Path | None = None) -> dict:
    data = AltTextPairs(world_seed, split, n_pairs, bb.config.vision_config.image_size)
    rows, kinds, drawn = _score_siblings(bb, data, n_pairs, batch_pairs, holds_fn=holds, kind_of=difference,
                                         canonical=lambda scene: canonical_captions(scene)[0], to_pixels=tasks.pixels)
    result = _summary(rows, kinds, split, "by_attribute")
    result["position_r2"] = position_r2(bb, [x[1] for pair in drawn[:64] for x in pair])
    result["where_prefix"] = where_prefix(bb, [x[:2] for pair in drawn for x in pair])
    if sheet:
        kept = [x for a, b in drawn if not holds(b[3], a[0]) and not holds(a[3], b[0]) for x in (a, b)][:16]
        images, refs = [x[1] for x in kept], [x[2] for x in kept]
        with torch.inference_mode():
            hyps = tasks.caption(bb, tasks.pixels(bb, images))
        result["examples"] = [{"alt_text": r, "greedy": h} for r, h in zip(refs[:4], hyps[:4])]
        contact_sheet(images, list(hyps), refs, Path(sheet))
    return result


@torch.inference_mode()
def where_prefix(bb: Backbone, scenes: list, batch: int = 64) -> float:
    """% of (two-group scene, group) where the decoder, cross-attending the fused noun phrase,
    scores the group's own side phrase above the other three (module docstring). `scenes`:
    (scene, image) pairs."""
    sides = list(SIDE_WORDS)  # left, right, top, bottom
    items = [(g.region, f"{COUNT_WORDS[g.count]} {g.colour} {g.shape}{'s' if g.count > 1 else ''}", image)
             for scene, image in scenes if len(scene.groups) == 2 for g in scene.groups]
    right = 0
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        embeds = tasks.encode_image(bb, tasks.pixels(bb, [im for _, _, im in chunk]))
        ids, mask = tasks.tokens(bb, [phrase for _, phrase, _ in chunk])
        states = tasks.fuse(bb, ids, mask, embeds)  # (B, Lp, H)
        scores = [tasks.answer_log_likelihood(bb, states, [SIDE_WORDS[side]] * len(chunk), mask) for side in sides]
        best = torch.stack(scores, 1).argmax(1)  # (B,)
        right += sum(sides[int(b)] == region for b, (region, _, _) in zip(best, chunk))
    return round(100.0 * right / max(1, len(items)), 1)


@torch.inference_mode()
def position_r2(bb: Backbone, images: list) -> float:
    """How much of a patch's column and row a linear map reads off the ViT's output token
    (R^2 on held-out images, mean of the two). A relation ("left of") can only be grounded
    if position survives the ViT: backbone v2 scored 0.08 here (learned position embeddings
    of norm 0.6 beside patch features of norm 11.5), so mirrored scenes looked alike."""
    tokens = tasks.encode_image(bb, tasks.pixels(bb, images))[:, 1:].float()  # (N, P, H), [CLS] dropped
    n, p, h = tokens.shape
    side = int(round(p ** 0.5))
    cells = torch.arange(p)
    x = torch.cat([tokens.reshape(n * p, h), torch.ones(n * p, 1)], 1)
    train = torch.arange(n * p) < (n * 2 // 3) * p  # first two thirds of the images fit, the rest score
    scores = []
    for target in (cells % side, cells // side):  # column, row of each patch (row-major)
        y = target.float().repeat(n)[:, None]
        w = torch.linalg.lstsq(x[train], y[train]).solution
        err = (x[~train] @ w - y[~train]).pow(2).mean()
        scores.append(1 - err / y[~train].var())
    return round(float(sum(scores) / 2), 3)


def _summary(rows: dict[str, list], kinds: list[str], split: str, by: str) -> dict:
    """% of pairs won per part, overall and by kind of difference; itm_acc at P = 0.5."""
    s = {k: np.concatenate(v) for k, v in rows.items()}
    wins = {"itc": s["itc_own"] > s["itc_other"], "itm": s["itm_own"] > s["itm_other"],
            "lm": s["lm_own"] > s["lm_other"], "lm_canonical": s["canon_own"] > s["canon_other"]}
    kinds_arr = np.array(kinds)
    return {"split": split, "pairs": len(kinds) // 2,
            **{k: round(float(100 * v.mean()), 1) for k, v in wins.items()},
            "itm_acc": round(float(100 * np.mean([(s["itm_own"] > 0.5).mean(), (s["itm_other"] <= 0.5).mean()])), 1),
            by: {a: {k: round(float(100 * v[kinds_arr == a].mean()), 1) for k, v in wins.items()}
                 for a in sorted(set(kinds))}}


def probe_clips(bb: Backbone, world_seed: int, split: str = "val", n_pairs: int = 100, *, batch_pairs: int = 8,
                frames: int = 8) -> dict:
    """`probe` on sibling clips of the clip pretraining pool, by the event kind that differs."""
    from training.shapes.clip_world import AltTextClips
    from training.shapes.motion import canonical_clip_captions, clip_holds

    data = AltTextClips(world_seed, split, n_pairs, bb.config.vision_config.image_size, frames)
    rows, kinds, _ = _score_siblings(bb, data, n_pairs, batch_pairs, holds_fn=clip_holds,
                                     kind_of=lambda a, b: a.event.kind,
                                     canonical=lambda clip: canonical_clip_captions(clip)[0],
                                     to_pixels=tasks.video_pixels)  # (B, F, 3, H, W)
    return _summary(rows, kinds, split, "by_event")


def contact_sheet(images: list[Image.Image], hyps: list[str], refs: list[str], out: Path, scale: int = 3,
                  cols: int = 4) -> None:
    """Grid of images (upscaled `scale`x, nearest), each with its greedy caption and,
    below in grey, the alt text it was drawn with."""
    side = images[0].width * scale
    cell_w, text_h = max(side, 256), 56
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * (side + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    for k, (image, hyp, ref) in enumerate(zip(images, hyps, refs)):
        x, y = (k % cols) * cell_w, (k // cols) * (side + text_h)
        sheet.paste(image.convert("RGB").resize((side, side), Image.Resampling.NEAREST), (x + (cell_w - side) // 2, y))
        lines = [(line, "black") for line in textwrap.wrap(hyp, 34)[:2]] + [("alt: " + ref[:36], "grey")]
        for n, (line, colour) in enumerate(lines):
            draw.text((x + 4, y + side + 3 + 16 * n), line, fill=colour, font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG", optimize=True)


def from_checkpoint(backbone_dir: str | Path, checkpoint: str | Path) -> Backbone:
    """The backbone a pretraining run (training.shapes.pretrain) holds at its last checkpoint:
    `backbone_dir` gives the architecture and processor, the checkpoint every weight."""
    bb = Backbone.from_dirs(backbone_dir)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    params, recipe = saved["params"], saved.get("recipe", {})
    if recipe.get("grown_words"):  # an --init run that grew the vocabulary: grow the same way first
        added = grow_vocabulary(bb, vocabulary_texts(motion=recipe.get("clip_share", 0) > 0))
        if added != recipe["grown_words"]:
            raise ValueError(f"{backbone_dir} does not grow into the vocabulary of {checkpoint}")
    state = {k.removeprefix("model."): v for k, v in params.items()}  # FullFinetune holds the copy as .model
    missing, unexpected = bb.load_state_dict(state, strict=False)
    tied = {"text_decoder.cls.predictions.decoder.weight", "text_decoder.cls.predictions.decoder.bias"}
    if unexpected or set(missing) - tied:
        raise ValueError(f"{checkpoint} does not fit {backbone_dir}: missing {sorted(set(missing) - tied)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    bb._fingerprint = None  # new weights
    return bb


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.shapes.probe", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", required=True, help="backbone directory (e.g. models/blip-shapes)")
    p.add_argument("--world-seed", type=int, default=0, help="world seed of the probe pairs")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="which split's pairs")
    p.add_argument("--pairs", type=int, default=300, help="sibling image pairs to score (0: none)")
    p.add_argument("--sheet", default=None, help="write a contact-sheet PNG of 16 images with greedy captions")
    p.add_argument("--checkpoint", default=None,
                   help="probe this pretraining checkpoint (<out>.ckpt/last.pt) instead; --backbone then only gives "
                        "the architecture (e.g. the run's --init)")
    p.add_argument("--clip-pairs", type=int, default=0, help="also probe this many sibling clip pairs (0: none)")
    p.add_argument("--clip-frames", type=int, default=8, help="frames per probed clip")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bb = from_checkpoint(args.backbone, args.checkpoint) if args.checkpoint else Backbone.from_dirs(args.backbone)
    result = probe(bb, args.world_seed, args.split, args.pairs, sheet=args.sheet) if args.pairs else {}
    if args.clip_pairs:
        result["clips"] = probe_clips(bb, args.world_seed, args.split, args.clip_pairs, frames=args.clip_frames)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
