"""The shapes world: deterministic per seed, LAVIS formats, splits, closed vocabulary, the
pretraining/downstream split and the one-attribute hard negatives."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from training.tokenizer import build_tokenizer
from training.world import PROMPT, load_texts, main
from training.world_render import COLOURS, SHAPES

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
    relation = re.compile(r"\b(left of|right of|above|below|two|three)\b")
    assert not any(relation.search(e["caption"]) for e in pre)  # pretraining only names objects
    assert any(relation.search(e["caption"]) for e in down)
    kinds = re.compile(rf"^(an? ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}))( and an? ({'|'.join(COLOURS)}) "
                       rf"({'|'.join(SHAPES)}))?$")
    assert all(kinds.match(e["caption"]) for e in pre), [e["caption"] for e in pre if not kinds.match(e["caption"])]


def test_retrieval_siblings_differ_in_one_word(worlds):
    root = worlds["a"]
    for split in ("train", "val", "test"):
        entries = _load(root, f"retrieval_{split}")
        for e in entries:
            assert e["hard_negatives"] and set(e["hard_negatives"]).isdisjoint(e["caption"])
            ours, theirs = e["caption"][0].split(), e["hard_negatives"][0].split()
            assert len(ours) == len(theirs)  # same groups in the same order of mention
            # colour, shape, relation: one word; count: one word, or two for "a circle" -> "two circles"
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
        assert len(pieces) == len(text.split())
    # a tokenizer from another seed's world has the very same vocabulary
    assert build_tokenizer(load_texts(worlds["c"])).get_vocab() == tokenizer.get_vocab()
