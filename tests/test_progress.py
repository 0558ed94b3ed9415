"""Progress bars: training.fit shows one for its validation, training.evaluate one per
phase of its predictions (tqdm on stderr, so the JSON on stdout stays parseable);
--no-progress silences both."""

from __future__ import annotations

import json

import pytest

from tests.tiny import tiny_shapes_world
from training import evaluate as evaluate_cli
from training import fit


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_shapes_world(tmp_path_factory.mktemp("world"), seed=0, n=40)


def test_fit_shows_a_bar_while_validating(world, tmp_path, capsys):
    out = tmp_path / "vqa.safetensors"
    fit.main(["--task", "vqa", "--backbone", str(world / "bb"), "--train", str(world / "vqa_train.json"),
              "--val", str(world / "vqa_val.json"), "--image-root", str(world), "--out", str(out),
              "--batch-size", "4", "--train-limit", "8", "--val-limit", "6", "--max-steps", "2"])
    err = capsys.readouterr().err
    assert "vqa epoch 1/5" in err  # the training bar
    assert "vqa: questions" in err and "6/6" in err  # the validation bar reached its end: 6 questions

    fit.main(["--task", "vqa", "--backbone", str(world / "bb"), "--train", str(world / "vqa_train.json"),
              "--val", str(world / "vqa_val.json"), "--image-root", str(world), "--out", str(tmp_path / "quiet.safetensors"),
              "--batch-size", "4", "--train-limit", "8", "--val-limit", "6", "--max-steps", "2", "--no-progress"])
    assert "vqa: questions" not in capsys.readouterr().err


@pytest.mark.parametrize("task, phases", [
    ("caption", ["caption: images"]),
    ("retrieval", ["retrieval: images", "retrieval: texts", "retrieval: ITM re-rank i->t", "retrieval: ITM re-rank t->i"]),
])
def test_evaluate_shows_a_bar_per_phase_and_prints_clean_json(world, capsys, task, phases):
    argv = ["--task", task, "--backbone", str(world / "bb"), "--adapter", "none",
            "--data", str(world / f"{task}_val.json"), "--image-root", str(world), "--limit", "5", "--batch-size", "2"]
    result = evaluate_cli.main(argv)
    captured = capsys.readouterr()
    assert json.loads(captured.out) == result  # stdout holds the result alone
    for phase in phases:
        assert phase in captured.err, (phase, captured.err[-500:])
    evaluate_cli.main(argv + ["--no-progress"])
    assert capsys.readouterr().err == ""
