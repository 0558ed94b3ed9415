"""Fan-out through a real server: one image, many adapters in one request (`adapters`),
each row exactly what a single-adapter request gets, adapters that leave the ViT frozen
sharing one vision pass, vision-touching ones getting their own in the same call."""

from __future__ import annotations

import base64

import httpx
import pytest

from adapters import KINDS, read_adapter_meta
from adapters.kinds.base import AdapterKind
from client import Client, NotFoundError, ValidationError
from tests.fanout_world import TEXT_ONLY, fanout_world, metric
from tests.test_server_harness import images, running_server
from tests.test_server_mixed import _same

CAPTION = ["none", "caption", "caption-text", "caption-lora", "caption-lora-text", "caption-vlpet", "caption-b"]
VQA = ["vqa-text", "none", "vqa", "vqa-vlpet-text", "vqa-lora", "vqa-vlpet"]
RETRIEVE = ["retrieval", "none", "retrieval-text", "retrieval-b"]
MISSES = "unitrans_image_cache_misses_total"


@pytest.fixture(scope="module")
def url():
    with running_server(fanout_world(), max_wait_ms=20) as url:
        yield url


def _touching(names) -> int:
    world = fanout_world()
    return sum(n != "none" and KINDS[(m := read_adapter_meta(world / "adapters" / f"{n}.safetensors")).kind]
               .touches_vision(m) for n in names)


def test_kinds_say_whether_they_touch_the_vision_tower():
    world = fanout_world()
    for name in TEXT_ONLY:
        meta = read_adapter_meta(world / "adapters" / f"{name}.safetensors")
        assert not KINDS[meta.kind].touches_vision(meta), name
    for name in ("caption", "caption-lora", "caption-vlpet", "vqa-vlpet", "retrieval"):  # default targets
        meta = read_adapter_meta(world / "adapters" / f"{name}.safetensors")
        assert KINDS[meta.kind].touches_vision(meta), name
    for name, kind in KINDS.items():  # every kind answers for itself (the protocol's default raises)
        assert type(kind).touches_vision is not AdapterKind.touches_vision, name


@pytest.mark.parametrize("multipart", [False, True])
def test_caption_fanout_rows_equal_single_requests(url, multipart):
    image = images(1, seed=11 + multipart)[0]  # a new image: the cache has not seen it
    with Client(url) as c:
        before = c.metrics()
        fan = c.caption(image, adapters=CAPTION, multipart=multipart)["per_adapter"]
        after = c.metrics()
        alone = [c.caption(image, adapter=name, multipart=multipart) for name in CAPTION]
    assert fan == alone  # exactly: the same strings, adapter names in request order
    assert len({r["caption"] for r in fan}) >= 4, fan  # the adapters really differ
    # one ViT row for every adapter leaving it frozen (none + 2 text-only), one per vision-touching one
    assert metric(after, MISSES) - metric(before, MISSES) == 1 + _touching(CAPTION)
    # ... all in one batched call
    count = 'unitrans_batch_size_count'
    assert metric(after, count, '{task="caption"}') - metric(before, count, '{task="caption"}') == 1


@pytest.mark.parametrize("candidates", [None, ["red", "two", "yes", "blue"]])
def test_vqa_fanout_rows_equal_single_requests(url, candidates):
    image = images(1, seed=12)[0]
    q = "what colour is the circle ?"
    with Client(url) as c:
        fan = c.vqa(image, q, adapters=VQA, candidates=candidates)["per_adapter"]
        alone = [c.vqa(image, q, adapter=name, candidates=candidates) for name in VQA]
        multipart = c.vqa(image, q, adapters=VQA, candidates=candidates, multipart=True)["per_adapter"]
    # answers exactly; scores to 1e-4 (one float ulp moves when a GEMM has 24 rows instead of 4:
    # CPU kernels block by batch size; the mixed-batch tests allow the same)
    assert [r["answer"] for r in fan] == [r["answer"] for r in alone] == [r["answer"] for r in multipart]
    _same(fan, alone)
    _same(fan, multipart)
    if candidates:
        assert len({tuple(r["scores"].values()) for r in fan}) == len(VQA)


def test_retrieve_fanout_rows_equal_single_requests(url):
    imgs = images(5, seed=13)
    inline = {f"i{j}": im for j, im in enumerate(imgs)}
    with Client(url) as c:
        fan = c.retrieve(text="a red circle", images=inline, top_k=3, adapters=RETRIEVE)["per_adapter"]
        alone = [c.retrieve(text="a red circle", images=inline, top_k=3, adapter=n) for n in RETRIEVE]
        texts = {"a": "a red circle", "b": "two green triangles", "c": "one yellow star"}
        fan_i2t = c.retrieve(image=imgs[0], texts=texts, top_k=2, adapters=RETRIEVE)["per_adapter"]
        alone_i2t = [c.retrieve(image=imgs[0], texts=texts, top_k=2, adapter=n) for n in RETRIEVE]
    _same(fan, alone)  # ids and order exactly, floats to 1e-4 (see above)
    _same(fan_i2t, alone_i2t)
    with Client(url) as c:  # a gallery: each adapter's vectors are filled in, then searched
        c.create_gallery("fan")
        c.add_items("fan", [{"id": f"g{j}", "image": im} for j, im in enumerate(imgs)])
        fan_g = c.retrieve(text="two green triangles", gallery="fan", top_k=3, adapters=RETRIEVE)["per_adapter"]
        alone_g = [c.retrieve(text="two green triangles", gallery="fan", top_k=3, adapter=n) for n in RETRIEVE]
    _same(fan_g, alone_g)
    assert [r["adapter"] for r in fan] == RETRIEVE
    assert len({tuple(h["score"] for h in r["results"]) for r in fan}) == len(RETRIEVE)


def test_fanout_bad_input_is_a_clear_4xx(url):
    image = images(1)[0]
    with Client(url) as c:
        for kw, words in [(dict(adapters=["caption", "caption"]), "unique"),
                          (dict(adapters=["caption"], adapter="caption"), "not both"),
                          (dict(adapters=[]), "adapters"),
                          (dict(adapters=[f"a{i}" for i in range(17)]), "over the limit")]:
            with pytest.raises(ValidationError) as exc:
                c.caption(image, **kw)
            assert exc.value.type == "unprocessable" and words in exc.value.message, (kw, exc.value.message)
        with pytest.raises(NotFoundError) as exc:
            c.caption(image, adapters=["caption", "no-such-adapter"])
        assert "no-such-adapter" in exc.value.message
    r = httpx.post(f"{url}/vqa", json={"image": "x", "question": "q", "adapters": "vqa"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "unprocessable"
    good = base64.b64encode(image).decode()
    r = httpx.post(f"{url}/caption", json={"image": good, "adapters": ["caption", "vqa"]})  # a vqa adapter
    assert 400 <= r.status_code < 500 and "'vqa'" in r.json()["error"]["message"], r.text


def test_video_fanout_rows_equal_single_requests(url):
    """A video fans out like an image: /vqa (JSON and multipart) and /retrieve both ways, each row
    what a single-adapter request gets; videos never enter the image-feature cache."""
    from tests.video_helpers import moving_square_frames, mp4

    clip = mp4(moving_square_frames(8, colour=(220, 30, 30)))
    other = mp4(moving_square_frames(8, colour=(30, 200, 30), seed=1))
    q = "what colour is the circle ?"
    with Client(url) as c:
        before = c.metrics()
        fan = c.vqa(None, q, video=clip, num_frames=3, adapters=VQA)["per_adapter"]
        after = c.metrics()
        alone = [c.vqa(None, q, video=clip, num_frames=3, adapter=n) for n in VQA]
        multipart = c.vqa(None, q, video=clip, num_frames=3, adapters=VQA, multipart=True)["per_adapter"]
        texts = {"a": "a red circle", "b": "two green triangles", "c": "one yellow star"}
        fan_v2t = c.retrieve(video=clip, texts=texts, top_k=2, num_frames=2, adapters=RETRIEVE)["per_adapter"]
        alone_v2t = [c.retrieve(video=clip, texts=texts, top_k=2, num_frames=2, adapter=n) for n in RETRIEVE]
        clips = {"red": clip, "green": other}
        fan_t2v = c.retrieve(text="a red circle", videos=clips, num_frames=2, adapters=RETRIEVE)["per_adapter"]
        alone_t2v = [c.retrieve(text="a red circle", videos=clips, num_frames=2, adapter=n) for n in RETRIEVE]
    assert [r["answer"] for r in fan] == [r["answer"] for r in alone] == [r["answer"] for r in multipart]
    assert [r["adapter"] for r in fan] == VQA
    _same(fan, alone)
    _same(fan, multipart)
    _same(fan_v2t, alone_v2t)
    _same(fan_t2v, alone_t2v)
    assert {r["direction"] for r in fan_v2t} == {"video_to_text"} and {r["direction"] for r in fan_t2v} == {
        "text_to_video"}
    entries = "unitrans_image_cache_entries"
    assert metric(after, entries) == metric(before, entries) and metric(after, MISSES) == metric(before, MISSES)
