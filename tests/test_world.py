"""The shapes world: deterministic per seed, LAVIS formats, splits disjoint for every --n,
closed vocabulary, the two registers (alt text / canonical), truth of texts, and the
one-attribute hard negatives."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from training.shapes.language import Description, Mention, alt_text, canonical_captions, holds, is_canonical, \
    spatial_cut
from training.shapes.render import COLOURS, SHAPES, Group
from training.shapes.world import PRETRAIN_MUTATIONS, PROMPT, POOL_DOWNSTREAM, POOL_PRETRAIN, AltTextPairs, difference, \
    load_texts, main, scene_pair
from training.tokenizer import build_tokenizer

N = 120  # 60 pretraining images, 30 downstream sibling pairs
TASKS = ("pretrain", "caption", "vqa", "retrieval")


def _json_files(root):
    return sorted(p.name for p in root.glob("*.json"))


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    out = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        root = tmp_path_factory.mktemp(f"world_{name}")
        main(["--out", str(root), "--seed", str(seed), "--n", str(N)])
        out[name] = root
    return out


def _load(root, name):
    return json.loads((root / f"{name}.json").read_text())


def test_same_seed_gives_identical_files_and_pixels(worlds):
    a, b = worlds["a"], worlds["b"]
    assert _json_files(a) == _json_files(b)
    for name in _json_files(a):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    images = sorted(p.name for p in (a / "images").iterdir())
    assert len(images) == N and images == sorted(p.name for p in (b / "images").iterdir())
    for name in images:
        assert np.array_equal(np.asarray(Image.open(a / "images" / name)), np.asarray(Image.open(b / "images" / name)))


def test_other_seed_differs(worlds):
    a, c = worlds["a"], worlds["c"]
    assert (a / "pretrain_train.json").read_bytes() != (c / "pretrain_train.json").read_bytes()
    same = [np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(c / "images" / p.name)))
            for p in sorted((a / "images").iterdir())]
    assert not any(same)


def test_files_formats_and_splits(worlds):
    root = worlds["a"]
    for task in TASKS:
        sizes = {split: len(_load(root, f"{task}_{split}")) for split in ("train", "val", "test")}
        assert all(sizes.values()), (task, sizes)
        assert sizes["train"] > sizes["val"] and sizes["train"] > sizes["test"]
    seen_images: dict[str, set] = {}
    for task in TASKS:
        for split in ("train", "val", "test"):
            for e in _load(root, f"{task}_{split}"):
                assert (root / e["image"]).is_file() and not e["image"].startswith("/")
                seen_images.setdefault(e["image"], set()).add(split)
                if task in ("pretrain", "caption"):
                    assert set(e) == {"image", "caption", "image_id"} and isinstance(e["caption"], str)
                elif task == "vqa":
                    assert {"question_id", "image", "question", "answer"} <= set(e)
                    assert len(e["answer"]) == 10 and all(isinstance(a, str) for a in e["answer"])
                else:
                    assert isinstance(e["caption"], list) and e["caption"]
    # an image belongs to one split only, whatever the task
    assert all(len(splits) == 1 for splits in seen_images.values())
    qids = [e["question_id"] for s in ("train", "val", "test") for e in _load(root, f"vqa_{s}")]
    assert len(qids) == len(set(qids))
    with Image.open(root / _load(root, "pretrain_train")[0]["image"]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"


def test_pretraining_and_downstream_are_disjoint_and_differ(worlds):
    root = worlds["a"]
    pre = [e for s in ("train", "val", "test") for e in _load(root, f"pretrain_{s}")]
    down = [e for s in ("train", "val", "test") for e in _load(root, f"caption_{s}")]
    assert not {e["image"] for e in pre} & {e["image"] for e in down}
    assert not any(is_canonical(e["caption"]) for e in pre)  # the canonical style is new downstream
    assert all(is_canonical(e["caption"]) for e in down)


def test_splits_are_disjoint_for_every_n(tmp_path):
    """The test split of a small world holds no image of a bigger world's train split."""
    small, big = tmp_path / "small", tmp_path / "big"
    main(["--out", str(small), "--seed", "0", "--n", "60"])
    main(["--out", str(big), "--seed", "0", "--n", "200"])
    train = {(big / e["image"]).read_bytes() for t in TASKS for e in _load(big, f"{t}_train")}
    held_out = {(small / e["image"]).read_bytes() for t in TASKS for s in ("val", "test") for e in _load(small, f"{t}_{s}")}
    assert train and held_out and not train & held_out
    # and growing a world only adds units: the small world's test images are the big one's first test images
    assert held_out <= {(big / e["image"]).read_bytes() for t in TASKS for s in ("val", "test") for e in _load(big, f"{t}_{s}")}


def test_alt_text_is_true_of_its_scene_and_sibling_texts_are_checked():
    kinds, words = set(), set()
    for p in range(200):
        rng, a, b = scene_pair(1, POOL_PRETRAIN, "train", p, 64)
        for scene in (a, b):
            text, desc = alt_text(rng, scene)
            assert holds(desc, scene) and not is_canonical(text) and text == text.lower()
            words |= set(text.replace(",", " ").replace(":", " ").replace(";", " ").split())
        kinds.add(len(a.groups))
    assert kinds == {1, 2}
    # pretraining speaks every word the downstream answers and captions need
    assert set(COLOURS) | set(SHAPES) | {"one", "two", "three", "1", "2", "3", "0", "yes", "no", "left", "right",
                                         "top", "bottom", "small", "large", "circles"} <= words
    scene = scene_pair(1, POOL_DOWNSTREAM, "train", 0, 64)[1]
    g = Group("red", "circle", 2, "left", "small"), Group("blue", "square", 1, "right", "large")
    scene = type(scene)(g, 64, scene.background, scene.boxes[:1] * 2, scene.jitter[:1] * 2)
    assert holds(Description((Mention(2, "red", "circle"), Mention(1, "blue", "square")), relation="left"), scene)
    assert not holds(Description((Mention(2, "red", "circle"), Mention(1, "blue", "square")), relation="right"), scene)
    assert holds(Description((Mention(0, shape="star"),)), scene)
    assert not holds(Description((Mention(3, shape="circle"),)), scene)
    assert holds(Description((Mention(size="small", region="left"),)), scene)
    assert canonical_captions(scene) == ["two red circles left of one blue square", "one blue square right of two red circles"]


def test_retrieval_siblings_differ_in_one_word(worlds):
    root = worlds["a"]
    for split in ("train", "val", "test"):
        entries = _load(root, f"retrieval_{split}")
        for e in entries:
            assert e["hard_negatives"] and set(e["hard_negatives"]).isdisjoint(e["caption"])
            ours, theirs = e["caption"][0].split(), e["hard_negatives"][0].split()
            assert len(ours) == len(theirs)  # same groups in the same order of mention
            # colour, shape, relation: one word; count: one word, or two for "one circle" -> "two circles"
            assert 1 <= sum(x != y for x, y in zip(ours, theirs)) <= 2
            sibling = [f for f in entries if f["caption"] == e["hard_negatives"]]
            assert sibling, "the hard negative image is in the same split's gallery"


def test_vocabulary_is_closed_and_tokenizes_to_whole_words(worlds):
    root = worlds["a"]
    texts = load_texts(root)
    assert PROMPT.strip() in texts
    tokenizer = build_tokenizer(texts)
    for text in texts:
        assert text == text.lower()
        pieces = tokenizer.tokenize(text)
        assert not any(p.startswith("##") or p == "[UNK]" for p in pieces), (text, pieces)
        assert len(pieces) == len(text.replace(",", " ,").replace(":", " :").replace(";", " ;").split())
    # a tokenizer from another seed's world has the very same vocabulary
    assert build_tokenizer(load_texts(worlds["c"])).get_vocab() == tokenizer.get_vocab()


def test_pretraining_captions_mostly_tell_siblings_apart():
    """The stream draws most captions false of the sibling: relation siblings, whose captions
    would rarely make a spatial claim by chance, become hard negatives only grounding solves."""
    told, relation_told, relation = 0, 0, 0
    for p in range(150):
        rng, a, b = scene_pair(2, POOL_PRETRAIN, "train", p, 64)
        for scene, sibling in ((a, b), (b, a)):
            text, desc = alt_text(rng, scene, contrast=sibling, contrast_share=1.0)
            assert holds(desc, scene) and not is_canonical(text)
            told += not holds(desc, sibling)
            if difference(a, b) == "relation":
                relation += 1
                relation_told += not holds(desc, sibling)
    assert told >= 0.85 * 300 and relation >= 40 and relation_told >= 0.85 * relation


def test_pretraining_mutations_follow_their_weights():
    kinds = [difference(*scene_pair(3, POOL_PRETRAIN, "train", p, 64)[1:]) for p in range(600)]
    share = {k: kinds.count(k) / len(kinds) for k in PRETRAIN_MUTATIONS}
    assert share["relation"] > share["colour"] + 0.1 and share["shape"] > share["size"] + 0.05
    uniform = [difference(*scene_pair(3, POOL_PRETRAIN, "train", p, 64, "uniform")[1:]) for p in range(600)]
    assert uniform.count("relation") < kinds.count("relation") / 1.5  # v2's first stage: relation only ~14%
    downstream = [difference(*scene_pair(3, POOL_DOWNSTREAM, "train", p, 64)[1:]) for p in range(600)]
    assert "size" not in downstream  # captions cannot say sizes, so downstream siblings never differ in one
    relation = [difference(*scene_pair(3, POOL_PRETRAIN, "train", p, 64, "relation")[1:]) for p in range(600)]
    assert relation.count("relation") > 0.55 * len(relation)  # a relation stage: most two-group pairs mirrored


def test_spatial_cut_starts_the_first_side_phrase_after_an_object():
    assert spatial_cut("a red circle to the left of a blue square") == 3  # prefix "a red circle"
    assert spatial_cut("two stars are above a circle") == 3
    assert spatial_cut("on the left: a red circle; on the right: two squares") == 6  # not the opening phrase
    assert spatial_cut("left, a circle") is None and spatial_cut("two red circles") is None


def test_spatial_cuts_cut_before_the_side_phrase_and_share_zero_is_the_old_stream():
    default, zero, cut = AltTextPairs(0, "train", 40, 32), AltTextPairs(0, "train", 40, 32, spatial_cuts=0.0), \
        AltTextPairs(0, "train", 40, 32, spatial_cuts=1.0)
    moved = 0
    for p in range(40):
        assert [(r[2], r[4]) for r in default[p]] == [(r[2], r[4]) for r in zero[p]]  # no extra draws at 0
        for _, _, text, _, c in cut[p]:
            assert 0 <= c < len(text.split())
            if spatial_cut(text) is not None:
                assert c == spatial_cut(text)
                moved += 1
    assert moved >= 20  # most two-group texts make a spatial claim
