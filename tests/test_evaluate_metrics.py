"""Metrics on hand-made examples: VQAv2 normalisation and accuracy, BLEU@4 / CIDEr (x100,
as papers print them) on known strings, R@K on a known score matrix."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import caption_scores, normalize_answer, recall_at_k, vqa_accuracy


@pytest.mark.parametrize("raw, norm", [
    ("Two", "2"), ("two.", "2"), ("the dog", "dog"), ("A red circle", "red circle"), ("yes!", "yes"),
    ("isnt", "isn't"), ("3.5", "3.5"), ("left-side", "left side"), ("none", "0"), ("  Blue\n", "blue"),
    ("1,000", "1000"),
])
def test_vqa_normalisation(raw, norm):
    assert normalize_answer(raw) == norm


def test_vqa_accuracy_official_leave_one_out():
    assert vqa_accuracy("two", ["2"] * 8 + ["two"] * 2) == 1.0  # number words -> digits
    assert vqa_accuracy("red", ["blue"] * 10) == 0.0
    # n matching of 10: n subsets drop a match -> min((n-1)/3, 1); 10-n keep all n -> min(n/3, 1)
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.9 * (1 / 3))
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * (2 / 3) + 7 * 1) / 10)
    assert vqa_accuracy("red", ["red"] * 4 + ["blue"] * 6) == 1.0
    assert vqa_accuracy("The Red.", ["red"] * 10) == 1.0


def test_bleu4_on_known_strings():
    # p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3, equal lengths -> no brevity penalty
    s = caption_scores({"a": ["the cat sat on a mat"]}, {"a": "the cat sat on the mat"})
    assert s["bleu4"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-4)  # 50.8


def test_cider_perfect_and_wrong():
    refs = {"1": ["two red circles left of a blue square"], "2": ["one green star above a purple circle"],
            "3": ["three yellow triangles"]}
    perfect = caption_scores(refs, {k: v[0].upper() for k, v in refs.items()})  # case is ignored
    assert perfect["bleu4"] == pytest.approx(100.0, abs=1e-4)
    # CIDEr = 10 x mean over n = 1..4 of tf-idf cosines (x100 here); a 3-word caption has no
    # 4-grams (cosine 0 for n = 4), so a perfect corpus scores 100 x 10 x (1 + 1 + 3/4) / 3 = 916.7
    assert perfect["cider"] == pytest.approx(1000 * (1 + 1 + 0.75) / 3, abs=1e-4)
    wrong = caption_scores(refs, {"1": "one green star", "2": "three yellow triangles", "3": "blue"})
    assert wrong["cider"] < 50 and wrong["bleu4"] < 0.1


def test_recall_at_k_known_matrix():
    # 3 images, 4 texts: image 0 <- texts 0, 1; image 1 <- text 2; image 2 <- text 3
    img2txt, txt2img = [[0, 1], [2], [3]], [0, 0, 1, 2]
    i2t = np.array([[0.1, 0.9, 0.0, 0.5],    # best true text (1) at rank 0
                    [0.8, 0.7, 0.6, 0.1],    # text 2 at rank 2
                    [0.9, 0.1, 0.2, 0.3]])   # text 3 at rank 1
    t2i = i2t.T.copy()                        # text 0: image 0 at rank 2 (0.1 < 0.8, 0.9)
    r = recall_at_k(i2t, t2i, img2txt, txt2img, ks=(1, 2, 3))
    assert r["i2t_r1"] == pytest.approx(100 / 3) and r["i2t_r2"] == pytest.approx(200 / 3) and r["i2t_r3"] == 100
    # t2i ranks: text0 -> 2, text1 -> 0, text2 -> 0, text3 -> 1
    assert (r["t2i_r1"], r["t2i_r2"], r["t2i_r3"]) == (50.0, 75.0, 100.0)
    assert r["r_mean"] == pytest.approx(np.mean([100 / 3, 200 / 3, 100, 50, 75, 100]))


def test_recall_rejects_query_without_truth():
    with pytest.raises(ValueError):
        recall_at_k(np.zeros((1, 1)), np.zeros((1, 1)), [[]], [0])
