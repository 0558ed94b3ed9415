"""The shapes world: a generated image-text data set for pretraining and adapters.

    python -m training.world --out /tmp/world --seed 0 --n 12000

Images are coloured shapes (circle, square, triangle, star in red, orange,
yellow, green, blue, purple) on neutral backgrounds with gradients and noise.
A scene has one or two *groups*; a group is 1-3 identical objects (one colour,
one shape, one size). With two groups, each fills one half of the image (left/
right or top/bottom), so "left of"/"above" between groups is never ambiguous.

Two disjoint pools of images, so adapters have something to learn:

* pretraining pool -> `pretrain_{train,val,test}.json` (caption format). Captions
  only NAME the kinds of object present, in a fixed colour-then-shape order that
  carries no spatial information and no counts: "a red circle and a blue square"
  (also for three red circles). The default backbone sees only these.
* downstream pool -> the tasks adapters are trained on, never seen in pretraining:
  - `caption_*.json`: counts and the relation, "two red circles left of a blue
    square"; both orders of mention are given as two entries of one image_id.
  - `vqa_*.json`: colour / shape / count / where / yes-no existence / yes-no
    relation questions; 10 answers each as in VQAv2 (counts: 8 x "2", 2 x "two").
  - `retrieval_*.json`: each image with its downstream captions. Downstream
    images come in *sibling pairs* (same split, adjacent image_ids) that differ
    in exactly one attribute - one group's colour, shape or count, or the
    relation (the layout mirrored) - so each image's sibling is a hard negative
    in the gallery; `hard_negatives` lists the sibling's captions (extra key).

Every file is in the BLIP/LAVIS formats of DESIGN.md, image paths are relative to
--out, splits are 80/10/10 per pool. `texts.json` lists every text of every task
(with the caption prompt), to build the tokenizer from. Output is a pure function
of (--seed, --n, --size, --pretrain-frac): each image draws from its own
`np.random.default_rng([seed, pool, index])`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from training.world_render import COLOURS, MAX_COUNT, OPPOSITE, SHAPES, Group, Scene, place, render, sample_background

PROMPT = "a picture of "  # BLIP's caption prompt; the decoder continues it
COUNT_WORDS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}  # counts of a shape: up to 2 groups x 3
RELATION_WORDS = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}
WHERE_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}
SPLITS = ("train", "val", "test")
POOL_PRETRAIN, POOL_DOWNSTREAM = 0, 1


# ---------------------------------------------------------------- scenes


def _make_scene(rng: np.random.Generator, groups: list[Group], size: int) -> Scene:
    boxes = tuple(place(rng, g.region, g.count) for g in groups)
    jitter = tuple(tuple(int(v) for v in rng.integers(-20, 21, size=3)) for _ in groups)
    return Scene(tuple(groups), size, sample_background(rng), boxes, jitter)


def sample_scene(rng: np.random.Generator, size: int) -> Scene:
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    n_groups = 1 if rng.random() < 0.3 else 2
    picked = rng.choice(len(kinds), size=n_groups, replace=False)
    counts = rng.integers(1, MAX_COUNT + 1, size=n_groups)
    if n_groups == 1:
        regions = ["all"]
    else:
        first = str(rng.choice(["left", "right", "top", "bottom"]))
        regions = [first, OPPOSITE[first]]
    groups = [Group(*kinds[k], int(n), r) for k, n, r in zip(picked, counts, regions)]
    return _make_scene(rng, groups, size)


def mutate(rng: np.random.Generator, scene: Scene) -> Scene:
    """A sibling of `scene` differing in exactly one attribute of one group (or,
    with two groups, in the relation). Background and other objects are kept."""
    groups = list(scene.groups)
    boxes = list(scene.boxes)
    options = ["colour", "shape", "count"] + (["relation"] if len(groups) == 2 else [])
    what = str(rng.choice(options))
    if what == "relation":  # mirror the layout: left<->right or top<->bottom
        horizontal = groups[0].region in ("left", "right")
        groups = [Group(g.colour, g.shape, g.count, OPPOSITE[g.region]) for g in groups]
        boxes = [tuple((1 - cx, cy, s) if horizontal else (cx, 1 - cy, s) for cx, cy, s in b) for b in boxes]
        return Scene(tuple(groups), scene.size, scene.background, tuple(boxes), scene.jitter)
    i = int(rng.integers(len(groups)))
    g = groups[i]
    taken = {(h.colour, h.shape) for h in groups}
    if what == "colour":
        choices = [c for c in COLOURS if (c, g.shape) not in taken]
        groups[i] = Group(str(rng.choice(choices)), g.shape, g.count, g.region)
    elif what == "shape":
        choices = [s for s in SHAPES if (g.colour, s) not in taken]
        groups[i] = Group(g.colour, str(rng.choice(choices)), g.count, g.region)
    else:
        count = int(rng.choice([n for n in range(1, MAX_COUNT + 1) if n != g.count]))
        groups[i] = Group(g.colour, g.shape, count, g.region)
        side = boxes[i][0][2]
        boxes[i] = tuple((cx, cy, side) for cx, cy, _ in place(rng, g.region, count))
    return Scene(tuple(groups), scene.size, scene.background, tuple(boxes), scene.jitter)


# ---------------------------------------------------------------- texts


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(group: Group, with_count: bool) -> str:
    plural = with_count and group.count > 1
    det = COUNT_WORDS[group.count] if plural else _article(group.colour)
    return f"{det} {group.colour} {group.shape}{'s' if plural else ''}"


def _bare(group: Group) -> str:
    """'red circle' / 'red circles': the group without determiner or number."""
    return f"{group.colour} {group.shape}{'s' if group.count > 1 else ''}"


def pretrain_caption(scene: Scene) -> str:
    """Names the kinds of object, fixed order (colour list, then shape list)."""
    order = sorted(scene.groups, key=lambda g: (list(COLOURS).index(g.colour), SHAPES.index(g.shape)))
    return " and ".join(_noun(g, with_count=False) for g in order)


def downstream_captions(scene: Scene) -> list[str]:
    """Counts and relation; with two groups, both orders of mention."""
    if len(scene.groups) == 1:
        return [_noun(scene.groups[0], with_count=True)]
    a, b = scene.groups
    return [
        f"{_noun(x, True)} {RELATION_WORDS[x.region]} {_noun(y, True)}" for x, y in ((a, b), (b, a))
    ]


def _answers(answer: str | int) -> list[str]:
    if isinstance(answer, int):  # counts: digits with some spelled-out synonyms
        return [str(answer)] * 8 + [COUNT_WORDS[answer]] * 2
    return [answer] * 10


def questions(rng: np.random.Generator, scene: Scene) -> list[tuple[str, str | int]]:
    """(question, answer) pairs; every question is answerable from the image alone."""
    gs = scene.groups
    qa: list[tuple[str, str | int]] = []
    for g in gs:
        be, s = ("are", "s") if g.count > 1 else ("is", "")
        if sum(h.shape == g.shape for h in gs) == 1:
            qa.append((f"what colour {be} the {g.shape}{s} ?", g.colour))
        if sum(h.colour == g.colour for h in gs) == 1:
            qa.append((f"what shape {be} the {g.colour} object{s} ?", g.shape))
        if len(gs) == 2:
            qa.append((f"where {be} the {g.colour} {g.shape}{s} ?", WHERE_WORDS[g.region]))
    # count: mostly a shape present in the image, sometimes any shape (answer often "0")
    shape = str(rng.choice([h.shape for h in gs] if rng.random() < 0.75 else list(SHAPES)))
    qa.append((f"how many {shape}s are there ?", sum(h.count for h in gs if h.shape == shape)))
    present = {(h.colour, h.shape) for h in gs}
    colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
    if rng.random() < 0.5:  # balance yes/no
        g = gs[int(rng.integers(len(gs)))]
        colour, shape = g.colour, g.shape
    qa.append((f"is there {_article(colour)} {colour} {shape} ?", "yes" if (colour, shape) in present else "no"))
    if len(gs) == 2:
        a, b = gs if rng.random() < 0.5 else gs[::-1]
        true_rel = a.region
        rel = true_rel if rng.random() < 0.5 else str(rng.choice([r for r in RELATION_WORDS if r != true_rel]))
        be = "are" if a.count > 1 else "is"
        question = f"{be} the {_bare(a)} {RELATION_WORDS[rel]} the {_bare(b)} ?"
        qa.append((question, "yes" if rel == true_rel else "no"))
    return qa


def vocabulary_texts() -> list[str]:
    """Every word any generated text can contain, whatever the seed or size."""
    words = list(COLOURS) + list(SHAPES) + [s + "s" for s in SHAPES] + list(COUNT_WORDS.values())
    words += [str(n) for n in COUNT_WORDS] + list(RELATION_WORDS.values()) + list(WHERE_WORDS.values())
    words += "a an and what colour shape is are the object objects where how many there ? yes no".split()
    return [PROMPT.strip(), " ".join(words)]


# ---------------------------------------------------------------- files


def _split_of(index: int, total: int) -> str:
    """80/10/10 by position: the first 80% of units are train, then val, then test."""
    if index < round(0.8 * total):
        return "train"
    return "val" if index < round(0.9 * total) else "test"


def _write_json(path: Path, entries: list) -> None:
    """One entry per line: diffable, and byte-identical for identical entries."""
    path.write_text("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")


def generate(out: Path, seed: int, n: int, size: int = 64, pretrain_frac: float = 0.5) -> dict[str, int]:
    """Writes images and JSONs under `out`; returns the number of entries per file."""
    if n < 20 or not 0 < pretrain_frac < 1:
        raise ValueError("need --n >= 20 and 0 < --pretrain-frac < 1")
    (out / "images").mkdir(parents=True, exist_ok=True)
    files: dict[str, list] = {f"{t}_{s}": [] for t in ("pretrain", "caption", "vqa", "retrieval") for s in SPLITS}
    texts: set[str] = set(vocabulary_texts())

    def save(name: str, scene: Scene, rng: np.random.Generator) -> str:
        rel = f"images/{name}.png"
        render(scene, int(rng.integers(2**31))).save(out / rel, format="PNG")
        return rel

    n_pre = int(round(n * pretrain_frac))
    for i in range(n_pre):
        rng = np.random.default_rng([seed, POOL_PRETRAIN, i])
        scene = sample_scene(rng, size)
        caption = pretrain_caption(scene)
        rel = save(f"pre_{i:06d}", scene, rng)
        files[f"pretrain_{_split_of(i, n_pre)}"].append({"image": rel, "caption": caption, "image_id": f"pre_{i:06d}"})
        texts.add(caption)

    n_pairs = (n - n_pre) // 2
    for p in range(n_pairs):
        rng = np.random.default_rng([seed, POOL_DOWNSTREAM, p])
        first = sample_scene(rng, size)
        pair = (first, mutate(rng, first))
        split = _split_of(p, n_pairs)
        caps = [downstream_captions(s) for s in pair]
        for k, scene in enumerate(pair):
            image_id = f"down_{p:06d}_{k}"
            rel = save(image_id, scene, rng)
            for c in caps[k]:
                files[f"caption_{split}"].append({"image": rel, "caption": c, "image_id": image_id})
            files[f"retrieval_{split}"].append({"image": rel, "caption": caps[k], "image_id": image_id,
                                                "hard_negatives": caps[1 - k]})
            for q, (question, answer) in enumerate(questions(rng, scene)):
                files[f"vqa_{split}"].append({"question_id": (2 * p + k) * 10 + q, "image": rel,
                                              "question": question, "answer": _answers(answer)})
                texts.update([question, *_answers(answer)])
            texts.update(caps[k])

    for name, entries in files.items():
        _write_json(out / f"{name}.json", entries)
    _write_json(out / "texts.json", sorted(texts))
    meta = {"seed": seed, "n": n, "size": size, "pretrain_frac": pretrain_frac, "prompt": PROMPT}
    (out / "world.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {name: len(entries) for name, entries in files.items()}


def load_texts(world: str | os.PathLike) -> list[str]:
    """Every text of every task of a generated world, prompt included."""
    return json.loads((Path(world) / "texts.json").read_text())


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.world", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (the image root of every JSON)")
    parser.add_argument("--seed", type=int, default=0, help="world seed; same seed and flags -> identical files")
    parser.add_argument("--n", type=int, default=12000, help="total number of images over both pools")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--pretrain-frac", type=float, default=0.5,
                        help="fraction of images in the pretraining pool; the rest are downstream sibling pairs")
    args = parser.parse_args(argv)
    counts = generate(Path(args.out), args.seed, args.n, args.size, args.pretrain_frac)
    for name, count in counts.items():
        print(f"{name:>16}: {count}")


if __name__ == "__main__":
    main(sys.argv[1:])
