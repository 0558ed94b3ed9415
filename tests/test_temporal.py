"""The temporal module (adapters/kinds/vcra/temporal.py), an option of VCRA/VeRA adapters on
video frame tokens: zero at init (a fresh adapter is the frozen backbone on video); images
and one-frame videos bit-identical with or without it; once non-zero, a clip and its time
reversal differ; a mixed video batch (with and without the module, other kinds, none) gives
each row what it gets alone, through the task functions and the server's split at the ViT;
it round-trips through its file and the table, counts in trainable_count; and fit --temporal
trains it on a tiny clip world."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adapters import AdapterTable, create_adapter, load_adapter, read_adapter_meta, routed, save_adapter, tasks
from adapters.backbone import from_image_tokens
from adapters.errors import AdapterFileError
from adapters.kinds import KINDS
from adapters.kinds.vcra.temporal import TEMPORAL_KNOTS, knot_weights
from tests.adapter_helpers import QUESTIONS, backbone_pair, randomize
from tests.tiny import random_images

F = 3
CANDIDATES = [["red", "two", "yes"]]


@pytest.fixture(scope="module")
def setup(config, processor):
    bb, frozen = backbone_pair(config, processor, seed=11)
    table = AdapterTable(bb, capacity=8, max_rank=8)
    made = {}
    for i, (name, kind, options) in enumerate([
        ("t", "vcra-qasn", {"temporal": True}),
        ("t2", "vcra-qasn", {"temporal": True}),
        ("plain", "vcra-qasn", {}),
        ("vera_t", "vera", {"temporal": True}),
        ("lora", "lora", {}),
        ("t_novision", "vcra-qasn", {"temporal": True, "targets": ("text", "cross", "decoder", "decoder_cross")}),
    ]):
        adapter = create_adapter(kind, bb, task="vqa", rank=4, seed=0, **options)
        randomize(adapter, seed=70 + i)
        table.insert(name, adapter)
        made[name] = adapter
    return bb, frozen, table, made


def _video(bb, n: int, seed: int, num_frames: int = F) -> torch.Tensor:
    ims = random_images(n * num_frames, seed=seed)
    return tasks.video_pixels(bb, [ims[i * num_frames:(i + 1) * num_frames] for i in range(n)])  # (n, F, 3, H, W)


def _text(bb, n: int):
    return tasks.tokens(bb, [QUESTIONS[i % len(QUESTIONS)] for i in range(n)])


def _run(bb, routing, px, ids, mask) -> dict:
    with torch.inference_mode():
        return {
            "vqa": tasks.vqa_ids(bb, px, ids, mask, num_beams=3, max_new_tokens=4, min_new_tokens=4, routing=routing),
            "rank": torch.stack(tasks.vqa_rank(bb, px, ids, mask, CANDIDATES * len(px), routing=routing)),
            "itm": tasks.itm_logits(bb, px, ids, mask, routing=routing),
            "itc_image": tasks.itc_image(bb, px, routing=routing),
        }


def _without_temporal(bb, adapter, kind="vcra-qasn"):
    """The same adapter's VCRA/QASN vectors, no temporal module."""
    twin = create_adapter(kind, bb, task=adapter.task, rank=adapter.rank, seed=adapter.seed,
                          targets=adapter.config.targets)
    state = {k: v for k, v in adapter.state_dict().items() if not k.startswith("temporal_")}
    twin.load_state_dict(state)
    return twin


def test_knot_weights_interpolate_relative_time():
    assert torch.equal(knot_weights(TEMPORAL_KNOTS, TEMPORAL_KNOTS), torch.eye(TEMPORAL_KNOTS))
    for f in (2, 3, 5, 16):
        w = knot_weights(f, TEMPORAL_KNOTS, dtype=torch.float64)
        torch.testing.assert_close(w.sum(1), torch.ones(f, dtype=torch.float64))
        assert bool((w >= 0).all())
    w = knot_weights(16, TEMPORAL_KNOTS)
    assert torch.equal(w[0], torch.eye(TEMPORAL_KNOTS)[0]) and torch.equal(w[-1], torch.eye(TEMPORAL_KNOTS)[-1])


def test_a_fresh_temporal_adapter_is_the_frozen_backbone_on_video(setup):
    bb, frozen, _, _ = setup
    px = _video(bb, 2, seed=1)
    ids, mask = _text(bb, 2)
    for kind in ("vcra-qasn", "vcra", "vera"):
        fresh = create_adapter(kind, bb, task="vqa", rank=4, seed=0, temporal=True)
        assert fresh.temporal_code.abs().sum() == 0 and fresh.temporal_motion.abs().sum() == 0
        got, want = _run(bb, fresh.routing(), px, ids, mask), _run(frozen, None, px, ids, mask)
        for key in want:
            assert torch.equal(got[key], want[key]), f"{kind}: {key}"


def test_images_and_one_frame_videos_are_unchanged_by_the_module(setup):
    """A trained (random) temporal adapter and its twin without the module agree bit for bit
    on images and on one-frame videos, and differ on a clip."""
    bb, _, _, made = setup
    twin = _without_temporal(bb, made["t"])
    ids, mask = _text(bb, 2)
    images = tasks.pixels(bb, random_images(2, seed=3))  # (2, 3, H, W)
    one_frame = images[:, None]  # (2, 1, 3, H, W)
    for px in (images, one_frame):
        got, want = _run(bb, made["t"].routing(), px, ids, mask), _run(bb, twin.routing(), px, ids, mask)
        for key in want:
            assert torch.equal(got[key], want[key]), key
    clip = _video(bb, 2, seed=4)
    assert not torch.allclose(_run(bb, made["t"].routing(), clip, ids, mask)["itm"],
                              _run(bb, twin.routing(), clip, ids, mask)["itm"], atol=1e-4)


def test_a_backwards_clip_gets_a_different_output_once_the_module_is_non_zero(setup):
    """Without the module (frozen, or VCRA alone) a clip and its reversal get the same ITC vector
    and ITM logits (tests/test_clips.py); with a non-zero module they differ."""
    bb, frozen, _, made = setup
    px = _video(bb, 1, seed=5, num_frames=4)
    both = torch.cat([px, px.flip(1)])  # (2, F, 3, H, W): the clip, then backwards
    ids, mask = _text(bb, 1)
    ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
    for routing in (None, _without_temporal(bb, made["t"]).routing()):
        out = _run(frozen if routing is None else bb, routing, both, ids, mask)
        torch.testing.assert_close(out["itc_image"][0], out["itc_image"][1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out["itm"][0], out["itm"][1], atol=1e-5, rtol=1e-4)
    for name in ("t", "vera_t"):
        out = _run(bb, made[name].routing(), both, ids, mask)
        assert not torch.allclose(out["itc_image"][0], out["itc_image"][1], atol=1e-3), name
        assert not torch.allclose(out["itm"][0], out["itm"][1], atol=1e-3), name
    # each half alone moves order: codes only, then motion only
    for part in ("temporal_code", "temporal_motion"):
        one = create_adapter("vcra-qasn", bb, task="vqa", rank=4, seed=0, temporal=True)
        with torch.no_grad():
            getattr(one, part).copy_(getattr(made["t"], part))
        out = _run(bb, one.routing(), both, ids, mask)
        assert not torch.allclose(out["itm"][0], out["itm"][1], atol=1e-6, rtol=0), part


@pytest.mark.parametrize("names", [
    ["t", None, "plain", "t"],
    ["plain", "t2", "lora", None, "vera_t", "t", "t_novision"],
    ["lora", None],  # no temporal row: the module never runs
], ids=["3", "7", "none-temporal"])
def test_mixed_video_batch_equals_each_row_alone(setup, names):
    bb, _, table, _ = setup
    px = _video(bb, len(names), seed=len(names))
    ids, mask = _text(bb, len(names))
    routing = table.routing(names)
    assert routing.has_frames == any(n in ("t", "t2", "vera_t", "t_novision") for n in names)
    mixed = _run(bb, routing, px, ids, mask)
    for i, name in enumerate(names):
        alone = _run(bb, table.routing([name]), px[i:i + 1], ids[i:i + 1], mask[i:i + 1])
        assert torch.equal(mixed["vqa"][i], alone["vqa"][0]), f"row {i} ({name}): answer tokens differ"
        for key in ("rank", "itm", "itc_image"):
            torch.testing.assert_close(mixed[key][i], alone[key][0], atol=1e-5, rtol=1e-4,
                                       msg=f"row {i} ({name}): {key}")


def test_table_rows_match_the_live_adapter_and_the_servers_split_at_the_vit(setup):
    """Serving runs the ViT apart (server/image_features.py) and the rest from image tokens: the
    module must run there too. An adapter leaving the ViT frozen shares the frozen tower's tokens
    (touches_vision False) and still gets its temporal module."""
    bb, frozen, table, made = setup
    px = _video(bb, 2, seed=8)
    ids, mask = _text(bb, 2)
    for name in ("t", "vera_t", "t_novision"):
        served = _run(bb, table.routing([name, name]), px, ids, mask)
        live = _run(bb, made[name].routing(), px, ids, mask)
        assert torch.equal(served["vqa"], live["vqa"]), name
        for key in ("rank", "itm", "itc_image"):
            torch.testing.assert_close(served[key], live[key], atol=1e-5, rtol=1e-4)
    meta = table.meta("t_novision")
    assert KINDS[meta.kind].touches_vision(meta) is False and KINDS["vcra-qasn"].touches_vision(table.meta("t"))
    names = ["t_novision", None, "t"]
    px = _video(bb, 3, seed=9)
    ids, mask = _text(bb, 3)
    routing = table.routing(names)
    with torch.inference_mode():
        shared = tasks.encode_image(frozen, px)  # the frozen tower's tokens (rows 0 and 1 share them)
        with routed(table.routing(["t"])):
            own = tasks.encode_image(bb, px[2:])  # row 2's adapter touches the ViT: its own pass
        embeds = torch.cat([shared[:2], own])
        split = {
            "itc_image": from_image_tokens.itc_image(bb, embeds, routing=routing),
            "itm": from_image_tokens.itm_logits(bb, embeds, ids, mask, routing=routing),
            "rank": torch.stack(from_image_tokens.rank_answers(bb, embeds, [ids[i][mask[i].bool()] for i in range(3)],
                                                               CANDIDATES * 3, routing=routing)),
        }
    whole = _run(bb, routing, px, ids, mask)
    for key, value in split.items():
        torch.testing.assert_close(value, whole[key], atol=1e-5, rtol=1e-4, msg=key)


def test_file_round_trip_through_the_table(setup, tmp_path):
    bb, _, _, made = setup
    adapter = made["t"]
    path = save_adapter(adapter, tmp_path / "t.safetensors", recipe={"temporal": True})
    meta = read_adapter_meta(path)
    assert meta.kind == "vcra-qasn" and meta.options["temporal"] is True
    plain = _without_temporal(bb, adapter)
    hv = bb.config.vision_config.hidden_size
    assert meta.trainable_params == adapter.trainable_count() == plain.trainable_count() + (TEMPORAL_KNOTS + 2) * hv
    assert meta.nbytes == read_adapter_meta(save_adapter(plain, tmp_path / "p.safetensors", recipe={})).nbytes \
        + 4 * (TEMPORAL_KNOTS + 2) * hv
    assert "temporal" not in read_adapter_meta(tmp_path / "p.safetensors").options  # headers without it unchanged
    loaded = load_adapter(path, bb)
    assert torch.equal(loaded.temporal_code, adapter.temporal_code)
    assert torch.equal(loaded.temporal_motion, adapter.temporal_motion)
    table = AdapterTable(bb, capacity=2, max_rank=8)
    table.load("t", path)
    px = _video(bb, 2, seed=10)
    ids, mask = _text(bb, 2)
    served, live = _run(bb, table.routing(["t", "t"]), px, ids, mask), _run(bb, adapter.routing(), px, ids, mask)
    assert torch.equal(served["vqa"], live["vqa"])
    torch.testing.assert_close(served["itc_image"], live["itc_image"], atol=1e-5, rtol=1e-4)
    # the header says temporal but the tensors are missing: refused, naming them
    tensors = {k: v for k, v in load_file(path).items() if not k.startswith("temporal_")}
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=header)
    with pytest.raises(AdapterFileError, match="temporal_"):
        load_adapter(tmp_path / "bad.safetensors", bb)


def test_options_are_checked(setup):
    bb, _, _, made = setup
    with pytest.raises(ValueError, match="caption"):
        create_adapter("vcra", bb, task="caption", rank=4, seed=0, temporal=True)
    with pytest.raises(ValueError, match="LoRA form"):
        KINDS["vcra"].lora_factors(create_adapter("vcra", bb, task="retrieve", rank=4, seed=0, qasn=False,
                                                  temporal=True), bb)
    assert "temporal" not in made["plain"].config.options()
    for name in ("t", "vera_t", "t_novision"):  # trainable_count = the optimizer's numbers, temporal included
        assert sum(p.numel() for p in made[name].parameters()) == made[name].trainable_count(), name


def test_fit_trains_the_temporal_module_on_a_tiny_clip_world(tmp_path):
    from adapters.backbone import Backbone
    from tests.tiny import tiny_config
    from training import fit
    from training.shapes.world import main as world_main
    from training.tokenizer import build_processor, build_tokenizer

    root = tmp_path / "world"
    world_main(["--out", str(root), "--seed", "3", "--n", "40", "--size", "32", "--frames", "4", "--clips", "40"])
    processor = build_processor(build_tokenizer(json.loads((root / "texts.json").read_text())), 32)
    torch.manual_seed(0)
    Backbone.from_config(tiny_config(processor.tokenizer), processor).save_pretrained(tmp_path / "bb")
    common = ["--backbone", str(tmp_path / "bb"), "--image-root", str(root), "--batch-size", "8", "--max-steps", "3",
              "--num-frames", "4", "--no-progress", "--val-limit", "8"]
    out = tmp_path / "qa.safetensors"
    summary = fit.main(["--task", "vqa", "--kind", "vcra-qasn", "--temporal", "--train",
                        str(root / "video_qa_train.json"), "--val", str(root / "video_qa_val.json"),
                        "--out", str(out), *common])
    hv = 32
    assert summary["temporal_params"] == (TEMPORAL_KNOTS + 2) * hv
    assert summary["paper_params"] >= summary["trainable_params"] > summary["temporal_params"]
    meta = read_adapter_meta(out)
    assert meta.options["temporal"] is True and meta.recipe["temporal"] is True
    bb = Backbone.from_dirs(tmp_path / "bb")
    trained = load_adapter(out, bb)
    assert trained.temporal_code.abs().sum() > 0 and trained.temporal_motion.abs().sum() > 0  # gradients reached it
    AdapterTable(bb, capacity=1).load("qa", out)
    out_r = tmp_path / "ret.safetensors"
    summary = fit.main(["--task", "retrieval", "--kind", "vcra-qasn", "--temporal", "--train",
                        str(root / "video_retrieval_train.json"), "--val", str(root / "video_retrieval_val.json"),
                        "--out", str(out_r), *common])
    assert read_adapter_meta(out_r).options["temporal"] is True and summary["temporal_params"] == (TEMPORAL_KNOTS + 2) * hv
    for bad in (["--task", "vqa", "--kind", "lora"], ["--task", "caption", "--kind", "vcra"]):
        with pytest.raises(SystemExit):
            fit.main([*bad, "--temporal", "--train", str(root / "video_qa_train.json"), "--val",
                      str(root / "video_qa_val.json"), "--out", str(tmp_path / "x.safetensors"), *common])


def test_a_server_serves_temporal_adapters_in_mixed_video_batches(tmp_path):
    """Through a real server: video VQA (generated, ranked, fan-out) and video -> text retrieval
    (ITC then ITM) with temporal adapters beside plain ones and the frozen backbone, alone then
    all at once: equal; and a temporal retrieval adapter scores a clip and its reversal apart
    where the frozen backbone cannot (the tiny random backbone's VQA barely reads the video:
    the task-level tests above check order there)."""
    import os

    from adapters.backbone import Backbone
    from client import Client
    from tests.test_server_harness import alone_then_together, running_server, tiny_world, write_random_adapter
    from tests.test_server_mixed import _same
    from tests.video_helpers import gif, moving_square_frames

    base = tiny_world()
    world = tmp_path / "world"
    (world / "adapters").mkdir(parents=True)
    os.symlink(base / "backbone", world / "backbone")
    for f in (base / "adapters").glob("*.safetensors"):
        os.symlink(f, world / "adapters" / f.name)
    bb = Backbone.from_dirs(world / "backbone")
    write_random_adapter(bb, world / "adapters" / "vqa-t.safetensors", "vcra-qasn", "vqa", seed=7, temporal=True)
    write_random_adapter(bb, world / "adapters" / "vqa-t-novision.safetensors", "vcra-qasn", "vqa", seed=8,
                         temporal=True, targets=("text", "cross", "decoder", "decoder_cross"))
    write_random_adapter(bb, world / "adapters" / "retrieval-t.safetensors", "vcra-qasn", "retrieve", seed=9,
                         temporal=True)
    frames = moving_square_frames(7)  # 3 sampled of 7: frames 1, 3, 5 either way round
    clip, backwards = gif(frames), gif(frames[::-1])
    texts = {"a": "a red circle left of a blue square", "b": "two green triangles"}
    reqs = []
    for i, adapter in enumerate(["vqa-t", "vqa", None, "vqa-t-novision", "none", "vqa-t"]):
        reqs.append(("vqa", dict(image=None, question="what colour is the circle ?", video=clip, num_frames=3,
                                 adapter=adapter)))
        reqs.append(("vqa", dict(image=None, question="is there a star ?", video=backwards, num_frames=3,
                                 candidates=["yes", "no"], adapter=adapter)))
    reqs.append(("vqa", dict(image=None, question="is there a star ?", video=clip, num_frames=3,
                             adapters=["vqa-t", "vqa-t-novision", "vqa", "none"])))
    for adapter in ("retrieval-t", "retrieval", "none", "retrieval-t"):
        reqs.append(("retrieve", dict(video=clip, num_frames=3, texts=texts, adapter=adapter)))
    with running_server(world, max_wait_ms=40, max_batch_size=16, video_num_frames=3, max_video_num_frames=6) as u:
        alone, mixed = alone_then_together(u, reqs)
        with Client(u) as c:
            scores = {(a, name): {h["id"]: h["score"] for h in c.retrieve(video=v, num_frames=3, texts=texts,
                                                                           adapter=a)["results"]}
                      for a in ("retrieval-t", "none") for name, v in (("clip", clip), ("backwards", backwards))}
    for i, (a, m) in enumerate(zip(alone, mixed)):
        _same(a, m, f"request {i} {reqs[i][0]}")
    assert scores[("none", "clip")] == pytest.approx(scores[("none", "backwards")], abs=1e-4)
    assert scores[("retrieval-t", "clip")] != pytest.approx(scores[("retrieval-t", "backwards")], abs=1e-4)
