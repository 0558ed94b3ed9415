"""The ablation's video tasks end to end on a tiny clip world: video-qa and video-retrieval
train on the world's clips (--num-frames, --temporal where the kind has it), evaluate on the
test clips, and write their own block of the results file; an image run and a video run
each leave the other's part (and the hand-written analysis) alone."""

from __future__ import annotations

import re

from tests.tiny import tiny_shapes_world
from training import ablation
from training import ablation_video as video


def _block(text: str) -> str:
    return text[text.index(video.BEGIN): text.index(video.END)]


def _row(block: str, row: str) -> list[str]:
    line = next(x for x in block.splitlines() if x.startswith(f"| {row} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_video_ablation_writes_its_block_and_keeps_the_image_table(tmp_path):
    world = tiny_shapes_world(tmp_path / "world", seed=0, n=40, size=32, clips=40, frames=4)
    md = tmp_path / "docs" / "results.md"
    common = ["--backbone", str(world / "bb"), "--world", str(world), "--work", str(tmp_path / "work"),
              "--results", str(md), "--rank", "4", "--batch-size", "4", "--train-limit", "8", "--val-limit", "4",
              "--test-limit", "4", "--k-test", "2"]
    image = [*common, "--tasks", "vqa", "--rows", "frozen"]
    ablation.main(image)
    md.write_text(md.read_text() + "hand-written analysis stays\n")
    image_part = md.read_text().split(ablation.ANALYSIS)[0]

    clips = [*common, "--tasks", "video-qa", "video-retrieval", "--num-frames", "3",
             "--rows", "frozen", "LoRA", "VCRA+QASN"]
    results = ablation.main(clips)
    runs = {(r["task"], r["row"]): r for r in results if r["task"] in video.VIDEO_TASKS}
    assert set(runs) == {(t, row) for t in video.VIDEO_TASKS for row in ("frozen", "LoRA", "VCRA+QASN")}
    assert runs["video-qa", "VCRA+QASN"]["temporal"] and runs["video-retrieval", "VCRA+QASN"]["temporal"]
    assert not runs["video-qa", "LoRA"]["temporal"] and runs["video-qa", "LoRA"]["trainable_params"] > 0
    assert runs["video-retrieval", "frozen"]["metrics"]["n_images"] == 2  # the test clips, not the images

    text = md.read_text()
    assert text.startswith(image_part) and text.count(video.BEGIN) == 1  # the image table untouched
    assert text.index(video.END) < text.index(ablation.ANALYSIS) and text.endswith("hand-written analysis stays\n")
    block = _block(text)
    head = [c.strip() for c in block.splitlines()[next(i for i, x in enumerate(block.splitlines())
                                                       if x.startswith("| method |"))].strip("|").split("|")]
    assert head[2:10] == ["video QA acc. (%)", "video R@mean (%)", "t2v R@1", "t2v R@5", "t2v R@10",
                          "v2t R@1", "v2t R@5", "v2t R@10"]
    number = re.compile(r"^\d+\.\d$")
    for row in ("frozen", "LoRA", "VCRA+QASN"):
        cells = _row(block, row)
        assert all(number.match(c) for c in cells[2:10]), cells  # a real number for every metric
        assert "not run" not in cells
    assert _row(block, "VCRA+QASN")[1].startswith("yes") and "no temporal module" in _row(block, "LoRA")[1]
    r = runs["video-retrieval", "VCRA+QASN"]
    assert _row(block, "VCRA+QASN")[4] == f"{r['metrics']['t2i_r1']:.1f}"  # the evaluated number, t2v R@1
    assert "3 frames per clip" in block and "Budget:" in block
    assert md.with_name("results_video.png").stat().st_size > 0 and md.with_suffix(".png").stat().st_size > 0

    # an image run rewrites its table and keeps the video block; a video rerun replaces its block only
    ablation.main(image)
    again = md.read_text()
    assert _block(again) == block and again.endswith("hand-written analysis stays\n")
    ablation.main([*clips, "--render-only"])
    assert md.read_text().count(video.BEGIN) == 1 and _block(md.read_text()) == block
