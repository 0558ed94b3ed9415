"""training.served_eval scores a real server on a generated world, and training.shapes.card
renders the model card from what pretraining and served_eval recorded (no typed numbers)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.test_server_harness import running_server
from training import served_eval
from training.metrics import vqa_accuracy
from training.shapes import card, pretrain
from training.shapes.world import generate

TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--batch-pairs", "4", "--warmup", "0.25",
        "--threads", "2", "--image-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    backbone = root / "blip-tiny"
    pretrain.main(["--out", str(backbone), "--world-seed", "5", *TINY, "--steps", "3", "--probe-pairs", "8"])
    generate(root / "world", seed=9, n=60, size=32, pretrain_frac=0.1)
    adapters = root / "adapters"
    adapters.mkdir()
    with running_server(root, backbone=[backbone], adapters=[adapters], max_wait_ms=20) as url:
        result = served_eval.main(["--url", url, "--world", str(root / "world"), "--split", "test",
                                   "--questions", "12", "--images", "4", "--top-k", "4",
                                   "--json", str(root / "served.json")])
    return {"root": root, "backbone": backbone, "result": result}


def test_served_eval_scores_every_task_and_the_question_only_baseline(setup):
    r, world = setup["result"], setup["root"] / "world"
    assert json.loads((setup["root"] / "served.json").read_text()) == r
    train = json.loads((world / "vqa_train.json").read_text())
    test = json.loads((world / "vqa_test.json").read_text())[:12]
    for qtype, answer in r["prior"].items():  # the most frequent first answer of each type in train
        counts = Counter(e["answer"][0] for e in train if e["question_type"] == qtype)
        assert counts[answer] == max(counts.values())
    baseline = [vqa_accuracy(r["prior"][e["question_type"]], e["answer"]) for e in test]
    assert r["default"]["vqa"]["question_only"] == round(100 * sum(baseline) / len(baseline), 1)
    assert r["default"]["vqa"]["n_questions"] == 12 and r["default"]["vqa"]["empty_answers"] == 0
    # no adapter files here: the task default is the frozen backbone, so both columns agree exactly
    assert r["default"]["vqa"]["accuracy"] == r["frozen"]["vqa"]["accuracy"]
    assert r["default"]["caption"] == r["frozen"]["caption"]
    ret = r["frozen"]["retrieval"]
    assert ret["n_images"] == 4 and ret["n_texts"] >= 4
    for d in ("t2i", "i2t"):
        assert 0 <= ret[f"{d}_r1"] <= ret[f"{d}_r5"] <= ret[f"{d}_r10"] <= 100


def test_model_card_renders_recorded_numbers(setup):
    results = setup["root"] / "results.md"
    results.write_text(f"# before\n{card.SERVED_BEGIN}\nold\n{card.SERVED_END}\nafter\n")
    card.main(["--backbone", str(setup["backbone"]), "--served", str(setup["root"] / "served.json"),
               "--results", str(results)])
    block = results.read_text()
    assert block.startswith("# before\n") and block.endswith(f"{card.SERVED_END}\nafter\n") and "old" not in block
    assert card.served_tables(setup["result"]) in block
    text = (setup["backbone"] / "README.md").read_text()
    record = json.loads((setup["backbone"] / "pretrain.json").read_text())
    r = setup["result"]
    assert f"{record['parameters'] / 1e6:.2f}M parameters" in text
    assert f"| ITC | {record['probe']['itc']} |" in text
    assert f"| shipped `vqa` adapter | {r['default']['vqa']['accuracy']} |" in text
    assert f"| question-only baseline | {r['default']['vqa']['question_only']} |" in text
    assert f"| frozen backbone | {r['frozen']['caption']['exact_match']} | {r['frozen']['caption']['bleu4']} |" in text
    assert "python -m training.shapes.pretrain --out" in text
