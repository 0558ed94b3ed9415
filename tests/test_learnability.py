"""The learnability experiment on a tiny world: every grid scale trains from the same
backbone, is scored on held-out questions only, and the run is reproducible."""

from __future__ import annotations

import json

from tests.tiny import tiny_shapes_world
from training.shapes import learnability


def test_where_learnability_curves_are_held_out_and_reproducible(tmp_path):
    world = tiny_shapes_world(tmp_path / "world", seed=0, n=60)
    where = [q for q in json.loads((world / "vqa_train.json").read_text()) if q["question_type"] == "where"]
    argv = ["--backbone", str(world / "bb"), "--world", str(world), "--extra-sincos", "0", "2", "--steps", "4",
            "--eval-every", "2", "--batch-size", "4", "--test", "8", "--train", "16", "--threads", "1",
            "--json", str(tmp_path / "curves.json")]
    out = learnability.main(argv)
    assert len(where) > 16  # the tiny world has held-out and training questions of its own
    assert set(out["curves"]) == {"0", "2"}
    for curve in out["curves"].values():
        assert [s for s, _ in curve] == [2, 4]
        assert all(acc in {100.0 * k / 8 for k in range(9)} for _, acc in curve)  # a share of the 8 held-out
    assert json.loads((tmp_path / "curves.json").read_text())["curves"] == json.loads(json.dumps(out["curves"]))
    again = learnability.main(argv[:-2])
    assert again["curves"] == out["curves"]  # seeded: the same batches, the same numbers


def test_relation_questions_get_their_own_answer_classes(tmp_path):
    world = tiny_shapes_world(tmp_path / "world", seed=0, n=60)
    argv = ["--backbone", str(world / "bb"), "--world", str(world), "--question-type", "relation", "--extra-sincos",
            "0", "--freeze-vit", "--steps", "2", "--eval-every", "2", "--batch-size", "4", "--test", "6", "--train",
            "12", "--threads", "1"]
    out = learnability.main(argv)
    assert out["labels"] == ["no", "yes"]
    assert [s for s, _ in out["curves"]["0"]] == [2]


def test_the_decoder_head_variants_score_held_out_questions(tmp_path):
    world = tiny_shapes_world(tmp_path / "world", seed=0, n=60)
    base = ["--backbone", str(world / "bb"), "--world", str(world), "--extra-sincos", "0", "--freeze-vit",
            "--steps", "2", "--eval-every", "2", "--batch-size", "4", "--test", "8", "--train", "16", "--threads", "1"]
    for extra in ([], ["--decoder-reads", "cls"], ["--redraw-answers"]):
        out = learnability.main(base + ["--head", "decoder"] + extra)
        assert out["labels"] == ["bottom", "left", "right", "top"]
        assert all(acc in {100.0 * k / 8 for k in range(9)} for _, acc in out["curves"]["0"])
