"""World clips: deterministic, splits disjoint for every --clips, one event per clip inside the
frame, texts true of their clip (and false of the sibling where they tell them apart), files
that training.data reads through its video path, MP4s that adapters.backbone.frames decodes,
and the image files unchanged when clips are added."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adapters import tasks
from adapters.backbone import Backbone
from adapters.backbone.frames import decode_video
from tests.tiny import tiny_config
from training.data import DATASETS, load_json
from training.shapes.clips import POOL_CLIP_DOWNSTREAM, POOL_CLIP_PRETRAIN, clip_pair, frame_scenes, regions_kept, \
    render_clip
from training.shapes.language import vocabulary_texts
from training.shapes.motion import Change, ClipDescription, canonical_clip_captions, canonical_description, \
    clip_alt_text, clip_answer, clip_holds, clip_questions, is_canonical_clip
from training.shapes.language import Description, Mention
from training.shapes.world import main
from training.tokenizer import build_processor, build_tokenizer

F, SIZE, CLIPS = 4, 32, 40
IMAGE_FILES = ("pretrain", "caption", "vqa", "retrieval")
VIDEO_FILES = ("pretrain_clips", "video_caption", "video_qa", "video_retrieval")
SPLITS = ("train", "val", "test")


def _world(root, seed=3, n=40, clips=CLIPS):
    args = ["--out", str(root), "--seed", str(seed), "--n", str(n), "--size", str(SIZE), "--frames", str(F)]
    main(args + (["--clips", str(clips)] if clips else []))
    return root


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    return {name: _world(tmp_path_factory.mktemp(name), clips=clips) for name, clips in
            (("a", CLIPS), ("b", CLIPS), ("plain", 0))}


def _load(root, name):
    return json.loads((root / f"{name}.json").read_text())


def _frames(root, rel):
    return np.stack([np.asarray(im) for im in decode_video((root / rel).read_bytes(), F)])  # (F, H, W, 3)


def test_clips_are_deterministic_and_the_image_files_do_not_change(worlds):
    a, b, plain = worlds["a"], worlds["b"], worlds["plain"]
    for name in sorted(p.name for p in a.glob("*.json")):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    videos = sorted(p.name for p in (a / "videos").iterdir())
    assert len(videos) == CLIPS and videos == sorted(p.name for p in (b / "videos").iterdir())
    for name in videos[:6]:
        assert np.array_equal(_frames(a, f"videos/{name}"), _frames(b, f"videos/{name}"))
    # clips add files; every file of the image world is byte-identical to a world without clips
    for name in [f"{t}_{s}" for t in IMAGE_FILES for s in SPLITS]:
        assert (a / f"{name}.json").read_bytes() == (plain / f"{name}.json").read_bytes(), name
    for image in (plain / "images").iterdir():
        assert image.read_bytes() == (a / "images" / image.name).read_bytes()
    assert not (plain / "videos").exists() and not list(plain.glob("video_*.json"))
    assert json.loads((a / "world.json").read_text())["clips"] == CLIPS
    assert "clips" not in json.loads((plain / "world.json").read_text())
    rng, clip, _ = clip_pair(3, POOL_CLIP_PRETRAIN, "train", 5, SIZE, F)
    assert clip == clip_pair(3, POOL_CLIP_PRETRAIN, "train", 5, SIZE, F)[1]


def test_splits_are_disjoint_from_each_other_and_from_images_for_every_size(tmp_path, worlds):
    small, big = _world(tmp_path / "small", seed=0, clips=40), _world(tmp_path / "big", seed=0, clips=80)

    def first_frames(root, splits):
        return {_frames(root, e["video"])[0].tobytes() for t in VIDEO_FILES for s in splits
                for e in _load(root, f"{t}_{s}")}

    train, held_out = first_frames(big, ["train"]), first_frames(small, ["val", "test"])
    assert train and held_out and not train & held_out
    assert held_out <= first_frames(big, ["val", "test"])  # growing --clips only adds units
    root = worlds["a"]
    seen: dict[str, set] = {}
    for t in VIDEO_FILES:
        for s in SPLITS:
            for e in _load(root, f"{t}_{s}"):
                seen.setdefault(e["video"], set()).add(s)
    assert all(len(v) == 1 for v in seen.values())  # one split per clip, whatever the task
    # no clip's first frame is an image of the image world (own pools, own streams)
    from PIL import Image
    images = {np.asarray(Image.open(p)).tobytes() for p in (root / "images").iterdir()}
    starts = {np.asarray(render_clip(c, 0)[0]).tobytes() for s in SPLITS for p in range(2)
              for c in clip_pair(3, POOL_CLIP_DOWNSTREAM, s, p, SIZE, F)[1:]}
    assert len(starts) >= 6 and not starts & images  # turn and appear siblings share their first frame


def _boxes_apart(scene) -> bool:
    flat = [(cx, cy, s) for boxes in scene.boxes for cx, cy, s in boxes]
    return all(abs(a[0] - b[0]) >= (a[2] + b[2]) / 2 - 1e-9 or abs(a[1] - b[1]) >= (a[2] + b[2]) / 2 - 1e-9
               for i, a in enumerate(flat) for b in flat[i + 1:])


def test_one_event_per_clip_inside_the_frame_and_siblings_differ_in_one_thing():
    kinds = {}
    for p in range(300):
        _, clip, sib = clip_pair(1, POOL_CLIP_PRETRAIN, "train", p, 64, 8)
        kinds[clip.event.kind] = kinds.get(clip.event.kind, 0) + 1
        for c in (clip, sib):
            assert regions_kept(c) and all(_boxes_apart(s) for s in frame_scenes(c))
        scenes, sib_scenes = frame_scenes(clip), frame_scenes(sib)
        if clip.event.kind == "move":  # the same frames, played backwards: only time order differs
            assert sib_scenes == scenes[::-1] and sib.event.direction != clip.event.direction
            assert scenes[0] != scenes[-1]
        elif clip.event.kind == "turn":
            assert sib.event.colour != clip.event.colour and sib.scene == clip.scene
            assert scenes[0].groups[clip.event.group].colour != scenes[-1].groups[clip.event.group].colour
        else:
            assert len(scenes[0].groups) == len(scenes[-1].groups) - 1  # absent first, then there
            assert sib.actor.colour != clip.actor.colour and sib.actor.shape == clip.actor.shape
    assert kinds["move"] > 100 and kinds["appear"] > 40 and kinds["turn"] > 40


def test_every_text_is_true_of_its_clip_and_false_of_the_sibling_where_claimed():
    told, total = 0, 0
    for p in range(150):
        rng, clip, sib = clip_pair(2, POOL_CLIP_DOWNSTREAM, "train", p, 64, 8)
        for c, other in ((clip, sib), (sib, clip)):
            text, desc = clip_alt_text(rng, c, contrast=other, contrast_share=1.0)
            assert clip_holds(desc, c) and not is_canonical_clip(text) and text == text.lower()
            told, total = told + (not clip_holds(desc, other)), total + 1
            caption = canonical_clip_captions(c)[0]
            assert is_canonical_clip(caption) and clip_holds(canonical_description(c), c)
            assert not clip_holds(canonical_description(c), other) and caption not in canonical_clip_captions(other)
            for kind, question, answer, query in clip_questions(rng, c):
                assert answer == clip_answer(*query, c) and answer is not None, question
                if kind in ("direction", "turn_colour", "appear_colour"):  # what the siblings differ in
                    assert clip_answer(*query, other) != answer, question
    assert told >= 0.85 * total
    # the claims themselves, on a clip whose event is known
    _, clip, _ = next(clip_pair(2, POOL_CLIP_DOWNSTREAM, "train", p, 64, 8) for p in range(50)
                      if clip_pair(2, POOL_CLIP_DOWNSTREAM, "train", p, 64, 8)[1].event.kind == "move")
    g, d = clip.actor, clip.event.direction
    who = Mention(None, g.colour, g.shape)
    assert clip_holds(ClipDescription(Description(()), (Change(who, "move", d),)), clip)
    assert clip_holds(ClipDescription(Description(()), (Change(who, "move"),)), clip)
    assert not clip_holds(ClipDescription(Description(()), (Change(who, "move", "up" if d != "up" else "down"),)), clip)
    assert not clip_holds(ClipDescription(Description(()), (Change(who, "still"),)), clip)
    assert not clip_holds(ClipDescription(Description(()), (Change(who, "appear"),)), clip)
    assert clip_answer("moves", who, clip) == "yes" and clip_answer("direction", who, clip) == d


def test_every_clip_text_tokenizes_to_whole_words_of_the_vocabulary(worlds):
    tokenizer = build_tokenizer(vocabulary_texts())
    assert set(build_tokenizer(vocabulary_texts(motion=False)).get_vocab()) < set(tokenizer.get_vocab())
    texts = json.loads((worlds["a"] / "texts.json").read_text())
    for p in range(200):
        rng, clip, sib = clip_pair(4, POOL_CLIP_PRETRAIN, "train", p, 64, 8)
        texts += [clip_alt_text(rng, clip, sib, 0.8)[0] for _ in range(3)]
        texts += [q for _, q, _, _ in clip_questions(rng, clip)] + canonical_clip_captions(clip)
    for text in texts:
        pieces = tokenizer.tokenize(text)
        assert not any(piece.startswith("##") or piece == "[UNK]" for piece in pieces), (text, pieces)
    assert {"moves", "left", "appears", "turns", "which", "way"} <= set(tokenizer.get_vocab())


def test_video_files_load_through_training_data_and_decode(worlds):
    root = worlds["a"]
    processor = build_processor(build_tokenizer(json.loads((root / "texts.json").read_text())), SIZE)
    qa = DATASETS["vqa"](load_json(root / "video_qa_train.json"), root, num_frames=F)
    ret = DATASETS["retrieval"](load_json(root / "video_retrieval_train.json"), root, num_frames=F)
    cap = DATASETS["caption"](load_json(root / "pretrain_clips_train.json"), root, num_frames=F)
    assert qa.media == ret.media == cap.media == "video"
    batch = qa.collate([qa[i] for i in range(3)], processor)
    assert batch["pixel_values"].shape == (3, F, 3, SIZE, SIZE) and len(batch["answers"][0]) == 10
    assert ret.collate([ret[0], ret[1]], processor)["pixel_values"].shape == (2, F, 3, SIZE, SIZE)
    assert cap.collate([cap[0]], processor)["pixel_values"].shape == (1, F, 3, SIZE, SIZE)
    videos, texts, _, _ = ret.gallery()
    assert len(videos) == len(load_json(root / "video_retrieval_train.json"))
    for e in load_json(root / "video_retrieval_train.json"):  # siblings sit in the same gallery
        assert e["hard_negatives"] and any(f["caption"] == e["hard_negatives"] for f in ret.entries)
    # the MP4 holds the rendered frames: decoded, they are within encoding noise of the render
    entry = load_json(root / "video_qa_test.json")[0]
    video_id = entry["video"].split("/")[1][:-4]
    split, p, k = video_id.split("_")[2], int(video_id.split("_")[3]), int(video_id.split("_")[4])
    rng, *pair = clip_pair(3, POOL_CLIP_DOWNSTREAM, split, p, SIZE, F)
    decoded = _frames(root, entry["video"]).astype(float)
    # the first clip of a pair draws its noise seed right after the pair: the render the file holds
    rendered = np.stack([np.asarray(im) for im in render_clip(pair[k], int(rng.integers(2**31)))]).astype(float) \
        if k == 0 else None
    assert decoded.shape == (F, SIZE, SIZE, 3)
    if rendered is not None:
        assert np.abs(decoded - rendered).mean() < 3
    frame_diffs = [np.abs(decoded[i + 1] - decoded[i]).mean() for i in range(F - 1)]
    assert max(frame_diffs) > 0.5  # something happens in the clip


def test_frame_order_is_invisible_to_the_video_transfer():
    """Why direction siblings are the clips' hardest negatives: BLIP's video transfer (ITC on the
    mean [CLS], fusion cross-attending concatenated frame tokens, no temporal embedding) gives a
    clip and its time reversal the same ITC vector and the same ITM score. Telling left from
    right needs a temporal module (UniAdapter's); this pins the measurement."""
    processor = build_processor(build_tokenizer(vocabulary_texts()), SIZE)
    torch.manual_seed(0)
    bb = Backbone.from_config(tiny_config(processor.tokenizer), processor)
    clip = next(c for p in range(20) for c in clip_pair(0, POOL_CLIP_DOWNSTREAM, "train", p, SIZE, F)[1:2]
                if c.event.kind == "move")
    frames = render_clip(clip, 7)
    pv = tasks.video_pixels(bb, [frames, frames[::-1]])  # (2, F, 3, H, W)
    ids, mask = tasks.tokens(bb, canonical_clip_captions(clip) * 2)
    with torch.inference_mode():
        itc = tasks.itc_image(bb, pv)
        itm = tasks.itm_scores(bb, pv, ids, mask)
    assert torch.allclose(itc[0], itc[1], atol=1e-5) and torch.allclose(itm[0], itm[1], atol=1e-5)
    assert not torch.equal(pv[0], pv[1])


def test_fit_trains_on_the_world_clip_files_as_written(worlds, tmp_path):
    """training.fit reads video_qa_*.json as an MSRVTT-QA set: a tiny adapter trains end to end."""
    from training import fit

    root = worlds["a"]
    processor = build_processor(build_tokenizer(json.loads((root / "texts.json").read_text())), SIZE)
    torch.manual_seed(0)
    Backbone.from_config(tiny_config(processor.tokenizer), processor).save_pretrained(tmp_path / "bb")
    out = tmp_path / "qa.safetensors"
    summary = fit.main(["--task", "vqa", "--kind", "vcra-qasn", "--backbone", str(tmp_path / "bb"),
                        "--train", str(root / "video_qa_train.json"), "--val", str(root / "video_qa_val.json"),
                        "--image-root", str(root), "--out", str(out), "--batch-size", "8", "--epochs", "1",
                        "--num-frames", str(F), "--no-progress"])
    assert summary["steps"] == len(load_json(root / "video_qa_train.json")) // 8 and out.is_file()
    assert 0 <= summary["val"]["accuracy"] <= 100
