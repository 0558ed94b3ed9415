"""The shapes world (v2): scenes, sibling pairs, and the files of every task.

    python -m training.shapes.world --out /tmp/world --seed 0 --n 12000
    python -m training.shapes.world --out /tmp/world --seed 0 --n 12000 --clips 2000   # + videos (clip_world)

Images are coloured shapes (circle, square, triangle, star; six colours; small or
large) on neutral backgrounds with gradients and noise. A scene has one or two
*groups*; a group is 1-3 identical objects. With two groups, each fills one half of
the image (left/right or top/bottom), so relations between groups are never
ambiguous. Scenes come in *sibling pairs* that differ in exactly one attribute (a
group's colour, shape, count or size, or the relation: the layout mirrored).

Two pools of images, drawn from different random streams:
* pretraining -> `pretrain_*.json` (caption format): alt text in the varied, partial,
  web-like register of `training.shapes.language.alt_text`. `training.shapes.pretrain`
  streams far more of these pairs than any file holds.
* downstream -> the tasks adapters learn, new formats on new images:
  - `caption_*.json`: the canonical style ("two red circles left of one blue square");
    with two groups both orders of mention are given, as two entries of one image_id.
  - `vqa_*.json`: colour / shape / count / where / exists / relation questions, 10
    answers each as in VQAv2 (counts: 8 x "2", 2 x "two"); `question_type` extra key.
  - `retrieval_*.json`: each image with its canonical captions; an image's sibling
    (adjacent image_id, same split) is its hard negative in the gallery, and
    `hard_negatives` lists the sibling's captions (extra key).

Splits are disjoint by construction: every unit draws from
`np.random.default_rng([seed, pool, split, index])`, so a test image can never be a
train image of any other --n. Files are in the BLIP/LAVIS formats of DESIGN.md, image
paths relative to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from training.shapes.language import COUNT_WORDS, PROMPT, alt_text, canonical_captions, holds, questions, \
    spatial_cut, vocabulary_texts
from training.shapes.render import COLOURS, MAX_COUNT, OPPOSITE, SHAPES, SIZES, Group, Scene, place, render, \
    sample_background

SPLITS = ("train", "val", "test")
SPLIT_SHARE = {"train": 0.8, "val": 0.1, "test": 0.1}
POOL_PRETRAIN, POOL_DOWNSTREAM = 0, 1
# How often pretraining siblings differ in each attribute. Weighted towards what is hard to
# ground (backbone v2's probe: colour 100%, count 92%, shape 73%, relation 50% = chance with
# uniform weights, when only ~8% of pairs carried any relation signal).
PRETRAIN_MUTATIONS = {"colour": 0.08, "shape": 0.25, "count": 0.2, "size": 0.07, "relation": 0.4}
# `pretrain --mutations`: "uniform" is how backbone v2's first stage was drawn; "relation" makes
# nearly every two-group pair a mirrored one (a stage that targets the relation alone; the
# other attributes keep a small share so that one-group scenes still have siblings).
MUTATION_SETS = {"weighted": PRETRAIN_MUTATIONS, "uniform": ("colour", "shape", "count", "size", "relation"),
                 "relation": {"colour": 0.02, "shape": 0.04, "count": 0.04, "size": 0.02, "relation": 0.88}}
DOWNSTREAM_MUTATIONS = ("colour", "shape", "count", "relation")  # what canonical captions can tell apart
CONTRAST_SHARE = 0.8  # share of pretraining captions drawn to be false of the sibling (when one exists)

__all__ = ["PROMPT", "SiblingStream", "AltTextPairs", "scene_pair", "sample_scene", "mutate", "difference", "generate", "load_texts",
           "vocabulary_texts"]


# ---------------------------------------------------------------- scenes


def _make_scene(rng: np.random.Generator, groups: list[Group], size: int) -> Scene:
    boxes = tuple(place(rng, g.region, g.count, g.size) for g in groups)
    jitter = tuple(tuple(int(v) for v in rng.integers(-20, 21, size=3)) for _ in groups)
    return Scene(tuple(groups), size, sample_background(rng), boxes, jitter)


def sample_scene(rng: np.random.Generator, size: int) -> Scene:
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    n_groups = 1 if rng.random() < 0.3 else 2
    picked = rng.choice(len(kinds), size=n_groups, replace=False)
    counts = rng.integers(1, MAX_COUNT + 1, size=n_groups)
    sizes = [str(rng.choice(list(SIZES))) for _ in range(n_groups)]
    if n_groups == 1:
        regions = ["all"]
    else:
        first = str(rng.choice(["left", "right", "top", "bottom"]))
        regions = [first, OPPOSITE[first]]
    groups = [Group(*kinds[k], int(n), r, z) for k, n, r, z in zip(picked, counts, regions, sizes)]
    return _make_scene(rng, groups, size)


def mutate(rng: np.random.Generator, scene: Scene, attributes=DOWNSTREAM_MUTATIONS) -> Scene:
    """A sibling of `scene` differing in exactly one of `attributes` of one group (or,
    with two groups, in the relation). Background and other objects are kept.
    `attributes`: a tuple (drawn uniformly) or a dict of attribute -> weight."""
    groups, boxes = list(scene.groups), list(scene.boxes)
    options = [a for a in attributes if a != "relation" or len(groups) == 2]
    if isinstance(attributes, dict):
        weights = np.array([attributes[a] for a in options], dtype=float)
        what = str(options[int(rng.choice(len(options), p=weights / weights.sum()))])
    else:
        what = str(rng.choice(options))
    if what == "relation":  # mirror the layout: left<->right or top<->bottom
        horizontal = groups[0].region in ("left", "right")
        groups = [Group(g.colour, g.shape, g.count, OPPOSITE[g.region], g.size) for g in groups]
        boxes = [tuple((1 - cx, cy, s) if horizontal else (cx, 1 - cy, s) for cx, cy, s in b) for b in boxes]
        return Scene(tuple(groups), scene.size, scene.background, tuple(boxes), scene.jitter)
    i = int(rng.integers(len(groups)))
    g = groups[i]
    taken = {(h.colour, h.shape) for h in groups}
    if what == "colour":
        groups[i] = Group(str(rng.choice([c for c in COLOURS if (c, g.shape) not in taken])), g.shape, g.count,
                          g.region, g.size)
    elif what == "shape":
        groups[i] = Group(g.colour, str(rng.choice([s for s in SHAPES if (g.colour, s) not in taken])), g.count,
                          g.region, g.size)
    elif what == "size":
        groups[i] = Group(g.colour, g.shape, g.count, g.region, next(z for z in SIZES if z != g.size))
        boxes[i] = place(rng, g.region, g.count, groups[i].size)
    else:
        count = int(rng.choice([n for n in range(1, MAX_COUNT + 1) if n != g.count]))
        groups[i] = Group(g.colour, g.shape, count, g.region, g.size)
        side = boxes[i][0][2]
        boxes[i] = tuple((cx, cy, side) for cx, cy, _ in place(rng, g.region, count, g.size))
    return Scene(tuple(groups), scene.size, scene.background, tuple(boxes), scene.jitter)


def difference(a: Scene, b: Scene) -> str:
    """Which attribute tells siblings apart."""
    for ga, gb in zip(a.groups, b.groups):
        for attr in ("colour", "shape", "count", "size"):
            if getattr(ga, attr) != getattr(gb, attr):
                return attr
    return "relation"


def scene_pair(seed: int, pool: int, split: str, index: int, size: int, mutations: str = "weighted"
               ) -> tuple[np.random.Generator, Scene, Scene]:
    """Unit `index` of (pool, split): its own rng (for the texts that follow) and two siblings.
    `mutations` names the pretraining pool's MUTATION_SETS entry."""
    rng = np.random.default_rng([seed, pool, SPLITS.index(split), index])
    first = sample_scene(rng, size)
    return rng, first, mutate(rng, first, MUTATION_SETS[mutations] if pool == POOL_PRETRAIN else DOWNSTREAM_MUTATIONS)


class SiblingStream(Dataset):
    """Item p = sibling pair `start + p` of a pretraining pool, drawn on demand:
    ((x, pixels, text, description, cut) x 2), x a scene or a clip. Subclasses say how a
    pair is made (`pair`), described (`text`) and drawn (`draw`); every draw comes from the
    pair's own rng in one order, so an item is a pure function of its index.

    `cut` splits the text's words for the prefix-LM objective: words[:cut] go through the
    fusion encoder with the pixels, the decoder continues with words[cut:] (the path VQA
    uses: question fused with the image -> answer). A `spatial_cuts` share of the texts with a
    side or relation phrase is cut just before it instead (language.spatial_cut): the decoder
    must then say where the prefix's object is. `start` skips the first pairs of the stream (a
    continued pretraining sees new pairs)."""

    n_pairs: int
    start: int
    spatial_cuts: float = 0.0  # 0 draws nothing extra: the stream is exactly as before the option

    def __len__(self) -> int:
        return self.n_pairs

    def pair(self, index: int) -> tuple[np.random.Generator, object, object]:
        raise NotImplementedError

    def text(self, rng: np.random.Generator, x, sibling) -> tuple[str, object]:
        raise NotImplementedError

    def draw(self, x, seed: int):
        raise NotImplementedError

    def __getitem__(self, p: int):
        rng, *pair = self.pair(self.start + p)
        rows = []
        for x, sibling in zip(pair, pair[::-1]):
            text, desc = self.text(rng, x, sibling)
            pixels = self.draw(x, int(rng.integers(2**31)))
            cut = int(rng.integers(len(text.split())))  # in [0, words)
            if self.spatial_cuts and rng.random() < self.spatial_cuts:
                at = spatial_cut(text)
                cut = cut if at is None else at
            rows.append((x, pixels, text, desc, cut))
        return rows


class AltTextPairs(SiblingStream):
    """The image stream: sibling scene pairs of the pretraining pool's `split` with alt text;
    `mutations` and `contrast_share` say how siblings differ and how many captions tell them
    apart (`alt_text`). Collate flattens pairs into rows."""

    def __init__(self, seed: int, split: str, n_pairs: int, image_size: int, start: int = 0,
                 mutations: str = "weighted", contrast_share: float = CONTRAST_SHARE, spatial_cuts: float = 0.0):
        self.seed, self.split, self.n_pairs, self.image_size, self.start = seed, split, n_pairs, image_size, start
        self.mutations, self.contrast_share, self.spatial_cuts = mutations, contrast_share, spatial_cuts

    def pair(self, index: int):
        return scene_pair(self.seed, POOL_PRETRAIN, self.split, index, self.image_size, self.mutations)

    def text(self, rng, x, sibling):
        return alt_text(rng, x, contrast=sibling, contrast_share=self.contrast_share)

    def draw(self, x, seed: int):
        return render(x, seed)

    def collate(self, items, processor) -> dict:
        rows = [r for pair in items for r in pair]
        scenes, images, texts, descs, cuts = zip(*rows)
        positive = torch.tensor([[holds(d, s) for d in descs] for s in scenes])  # (N, N) images x texts
        return {"pixel_values": processor.image_processor(list(images), return_tensors="pt")["pixel_values"],
                **text_fields(processor.tokenizer, texts, cuts), "positive": positive}


def text_fields(tok, texts, cuts) -> dict:
    """The text side of a pretraining batch (training.losses.pretrain_loss): the texts alone,
    prompt + text for the decoder, and each text cut into a fused prefix and a decoded rest."""
    words = [t.split() for t in texts]
    prefix = tok([" ".join(w[:c]) for w, c in zip(words, cuts)], padding="longest", truncation=True,
                 max_length=tok.model_max_length, return_tensors="pt")  # [CLS] prefix [SEP], maybe empty
    suffix = tok([" ".join(w[c:]) for w, c in zip(words, cuts)], padding="longest", truncation=True,
                 max_length=tok.model_max_length, return_tensors="pt")  # never empty: cut < words
    text = tok(list(texts), padding="longest", truncation=True, max_length=tok.model_max_length,
               return_tensors="pt")
    dec = tok([PROMPT + t for t in texts], padding="longest", truncation=True, max_length=tok.model_max_length,
              return_tensors="pt")
    return {"input_ids": text.input_ids, "attention_mask": text.attention_mask, "dec_ids": dec.input_ids,
            "dec_mask": dec.attention_mask, "prefix_ids": prefix.input_ids, "prefix_mask": prefix.attention_mask,
            "suffix_ids": suffix.input_ids, "suffix_mask": suffix.attention_mask,
            "prompt_len": len(tok(PROMPT).input_ids) - 1, "texts": list(texts)}


def _answers(answer: str | int) -> list[str]:
    if isinstance(answer, int):  # counts: digits with some spelled-out synonyms
        return [str(answer)] * 8 + [COUNT_WORDS[answer]] * 2
    return [answer] * 10


# ---------------------------------------------------------------- files


def _units(n_units: int) -> dict[str, int]:
    counts = {s: int(round(SPLIT_SHARE[s] * n_units)) for s in ("val", "test")}
    counts["train"] = n_units - counts["val"] - counts["test"]
    return counts


def _write_json(path: Path, entries: list) -> None:
    """One entry per line: diffable, and byte-identical for identical entries."""
    path.write_text("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")


def generate(out: Path, seed: int, n: int, size: int = 64, pretrain_frac: float = 0.5, clips: int = 0,
             frames: int = 8) -> dict[str, int]:
    """Writes images and JSONs under `out` (and, with `clips`, videos: training.shapes.clip_world);
    returns the number of entries per file. clips=0 writes exactly what a world without clips was."""
    if n < 40 or not 0 < pretrain_frac < 1:
        raise ValueError("need --n >= 40 and 0 < --pretrain-frac < 1")
    (out / "images").mkdir(parents=True, exist_ok=True)
    files: dict[str, list] = {f"{t}_{s}": [] for t in ("pretrain", "caption", "vqa", "retrieval") for s in SPLITS}
    texts: set[str] = set(vocabulary_texts(motion=clips > 0))

    def save(name: str, scene: Scene, rng: np.random.Generator) -> str:
        rel = f"images/{name}.png"
        render(scene, int(rng.integers(2**31))).save(out / rel, format="PNG")
        return rel

    n_pre = int(round(n * pretrain_frac)) // 2
    for split, count in _units(n_pre).items():
        for p in range(count):
            rng, *pair = scene_pair(seed, POOL_PRETRAIN, split, p, size)
            for k, scene in enumerate(pair):
                image_id = f"pre_{split}_{p:06d}_{k}"
                caption, _ = alt_text(rng, scene, contrast=pair[1 - k], contrast_share=CONTRAST_SHARE)
                files[f"pretrain_{split}"].append({"image": save(image_id, scene, rng), "caption": caption,
                                                   "image_id": image_id})
                texts.add(caption)

    for split, count in _units((n - 2 * n_pre) // 2).items():
        for p in range(count):
            rng, *pair = scene_pair(seed, POOL_DOWNSTREAM, split, p, size)
            caps = [canonical_captions(s) for s in pair]
            for k, scene in enumerate(pair):
                image_id = f"down_{split}_{p:06d}_{k}"
                rel = save(image_id, scene, rng)
                for c in caps[k]:
                    files[f"caption_{split}"].append({"image": rel, "caption": c, "image_id": image_id})
                files[f"retrieval_{split}"].append({"image": rel, "caption": caps[k], "image_id": image_id,
                                                    "hard_negatives": caps[1 - k]})
                for q, (kind, question, answer) in enumerate(questions(rng, scene)):
                    files[f"vqa_{split}"].append({"question_id": f"{image_id}_{q}", "image": rel, "question": question,
                                                  "answer": _answers(answer), "question_type": kind})
                    texts.update([question, *_answers(answer)])
                texts.update(caps[k])

    meta = {"version": 2, "seed": seed, "n": n, "size": size, "pretrain_frac": pretrain_frac, "prompt": PROMPT}
    if clips:  # own pools and streams: the image files above are the same with or without clips
        from training.shapes.clip_world import write_clips  # PyAV loads only for worlds with clips

        clip_files, clip_texts = write_clips(out, seed, clips, size, frames, pretrain_frac)
        files.update(clip_files)
        texts |= clip_texts
        meta.update(clips=clips, frames=frames)
    for name, entries in files.items():
        _write_json(out / f"{name}.json", entries)
    _write_json(out / "texts.json", sorted(texts))
    (out / "world.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {name: len(entries) for name, entries in files.items()}


def load_texts(world: str | Path) -> list[str]:
    """Every text of every task of a generated world, prompt included."""
    return json.loads((Path(world) / "texts.json").read_text())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.shapes.world", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (the image root of every JSON)")
    parser.add_argument("--seed", type=int, default=0, help="world seed; same seed and flags -> identical files")
    parser.add_argument("--n", type=int, default=12000, help="total number of images over both pools")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--pretrain-frac", type=float, default=0.5,
                        help="fraction of images in the pretraining pool; the rest are downstream sibling pairs")
    parser.add_argument("--clips", type=int, default=0,
                        help="also write this many clips (MP4 under videos/, video_*.json, pretrain_clips_*.json); "
                             "0: none, the image files are the same either way")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (>= 4)")
    args = parser.parse_args(argv)
    counts = generate(Path(args.out), args.seed, args.n, args.size, args.pretrain_frac, args.clips, args.frames)
    for name, count in counts.items():
        print(f"{name:>16}: {count}")


if __name__ == "__main__":
    main(sys.argv[1:])
