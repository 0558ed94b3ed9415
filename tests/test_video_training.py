"""training.fit and training.evaluate on a tiny video set in the field's formats: MSRVTT-QA
style QA JSON and DiDeMo/MSRVTT style retrieval JSON, clips written here with PyAV (MP4,
WebM) and PIL (GIF) under a video root. Fit runs end to end, the adapter loads, and
evaluation predicts what the server's video path predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapters import AdapterTable, predict, tasks
from adapters.backbone import Backbone
from adapters.backbone.frames import decode_video
from tests.tiny import tiny_config, tiny_processor
from tests.video_helpers import gif, moving_square_frames, mp4, webm
from training import evaluate as evaluate_cli
from training import fit
from training.data import DATASETS, load_json

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 30)}
FRAMES = 3


@pytest.fixture(scope="module")
def video_set(tmp_path_factory) -> Path:
    """8 clips (2 per colour; MP4, WebM and GIF) in root/videos, QA and retrieval JSONs in root."""
    root = tmp_path_factory.mktemp("videos")
    (root / "videos").mkdir()
    qa, ret = [], []
    writers = [("mp4", mp4), ("webm", webm), ("gif", gif)]
    for i in range(8):
        colour = list(COLOURS)[i % 4]
        ext, write = writers[i % 3]
        name = f"video{i}.{ext}"
        (root / "videos" / name).write_bytes(write(moving_square_frames(6 + i, colour=COLOURS[colour], seed=i)))
        qa.append({"question_id": i, "video": name, "question": "what colour is the circle ?", "answer": colour})
        ret.append({"video": name, "caption": [f"a {colour} circle", f"one {colour} star"], "duration": 6 + i})
    for split, sl in (("train", slice(0, 8)), ("val", slice(0, 4))):
        (root / f"qa_{split}.json").write_text(json.dumps(qa[sl]))
        (root / f"ret_{split}.json").write_text(json.dumps(ret[sl]))
    processor = tiny_processor()
    torch.manual_seed(0)
    Backbone.from_config(tiny_config(processor.tokenizer), processor).save_pretrained(root / "bb")
    return root


def _args(root: Path, task: str, prefix: str, out: Path, *extra: str) -> list[str]:
    return ["--task", task, "--backbone", str(root / "bb"), "--train", str(root / f"{prefix}_train.json"),
            "--val", str(root / f"{prefix}_val.json"), "--image-root", str(root / "videos"), "--out", str(out),
            "--batch-size", "4", "--num-frames", str(FRAMES), "--no-progress", *extra]


def test_video_datasets_read_the_field_formats(video_set):
    qa = DATASETS["vqa"](load_json(video_set / "qa_train.json"), video_set / "videos", num_frames=FRAMES)
    assert qa.media == "video" and qa[0][2] == ["red"]  # MSRVTT-QA: one answer string
    bb = Backbone.from_dirs(video_set / "bb")
    batch = qa.collate([qa[0], qa[1]], bb.processor)
    assert batch["pixel_values"].shape == (2, FRAMES, 3, 32, 32)
    ret = DATASETS["retrieval"](load_json(video_set / "ret_train.json"), video_set / "videos", num_frames=FRAMES)
    videos, texts, txt2img, img2txt = ret.gallery()
    assert len(videos) == 8 and len(texts) == 16 and img2txt[3] == [6, 7]
    with pytest.raises(ValueError, match="mix"):
        DATASETS["vqa"](load_json(video_set / "qa_train.json") + [{"image": "x.png", "question": "q", "answer": ["a"]}],
                        video_set)


@pytest.mark.parametrize("task, prefix", [("vqa", "qa"), ("retrieval", "ret")])
def test_fit_and_evaluate_a_video_adapter_end_to_end(video_set, tmp_path, task, prefix):
    out = tmp_path / f"{task}.safetensors"
    summary = fit.main(_args(video_set, task, prefix, out, "--kind", "vcra-qasn", "--epochs", "2"))
    pairs = 8 if task == "vqa" else 16  # 8 questions; 8 clips x 2 captions
    assert summary["steps"] == 2 * pairs // 4 and summary["last_loss"] == summary["last_loss"]  # 2 epochs; not NaN
    losses = [json.loads(x)["loss"] for x in (tmp_path / f"{task}.safetensors.log.jsonl").read_text().splitlines()
              if '"loss"' in x and '"event"' not in x]  # step records
    assert len(losses) >= 2 and all(torch.isfinite(torch.tensor(losses)))
    bb = Backbone.from_dirs(video_set / "bb")
    meta = AdapterTable(bb).load("v", out)
    assert meta.recipe["num_frames"] == FRAMES and meta.task == ("vqa" if task == "vqa" else "retrieve")
    result = evaluate_cli.main(["--task", task, "--backbone", str(video_set / "bb"), "--adapter", str(out),
                                "--data", str(video_set / f"{prefix}_val.json"), "--image-root",
                                str(video_set / "videos"), "--num-frames", str(FRAMES), "--no-progress"])
    if task == "vqa":
        assert result["n_questions"] == 4 and 0 <= result["accuracy"] <= 100
        assert summary["val"]["accuracy"] == result["accuracy"]  # fit's validation is evaluate's
    else:
        assert result["n_images"] == 4 and result["n_texts"] == 8
        for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
            assert 0 <= result[key] <= 100, key
        assert result["i2t_r10"] == result["t2i_r10"] == 100  # 4 videos, 8 texts: every truth is in the top 10
        assert summary["val"]["r_mean"] == result["r_mean"]


def test_evaluation_answers_are_the_served_video_answers(video_set, tmp_path):
    """evaluate.predict_answers on a video set == predict.answers on the clip decoded as the server does."""
    bb = Backbone.from_dirs(video_set / "bb")
    ds = DATASETS["vqa"](load_json(video_set / "qa_val.json"), video_set / "videos", num_frames=FRAMES)
    got = evaluate_cli.predict_answers(bb, ds, batch_size=3)
    for i, entry in enumerate(load_json(video_set / "qa_val.json")):
        frames = decode_video((video_set / "videos" / entry["video"]).read_bytes(), FRAMES)
        with torch.inference_mode():
            alone = predict.answers(bb, tasks.video_pixels(bb, [frames]),
                                    predict.question_ids(bb, [entry["question"]], 40))
        assert got[i] == alone[0]


def test_video_store_keeps_only_the_most_recent_clips(video_set):
    from training.data import VideoStore

    bb = Backbone.from_dirs(video_set / "bb")
    store = VideoStore(video_set / "videos", bb.processor.image_processor, num_frames=2, max_cached=2)
    names = [f"video{i}.{ext}" for i, ext in enumerate(["mp4", "webm", "gif"])]
    first = store.pixels(names)  # a batch larger than the cache is still whole
    assert first.shape == (3, 2, 3, 32, 32) and list(store._cache) == names[1:]
    assert torch.equal(store.pixels([names[0]])[0], first[0])  # decoded again: the same pixels
    assert list(store._cache) == [names[2], names[0]]
