"""The image-feature cache through a real server: repeated images run the ViT once per
vision state, ITM re-ranking reuses what the gallery's ITC pass computed, and a replaced
and reloaded adapter is never served stale image tokens."""

from __future__ import annotations

import shutil

import torch

from client import Client
from server.image_features import ImageFeatureCache
from server.metrics import Metrics
from tests.fanout_world import copy_world, fanout_world, metric
from tests.test_server_harness import images, running_server

HITS, MISSES = "unitrans_image_cache_hits_total", "unitrans_image_cache_misses_total"
QUESTIONS = ["what colour is the circle ?", "is there a star ?", "how many squares are there ?", "two", "red"]


def _counts(c) -> tuple[float, float]:
    text = c.metrics()
    return metric(text, HITS), metric(text, MISSES)


def test_five_questions_about_one_image_encode_it_once():
    with running_server(fanout_world()) as url, Client(url) as c:
        for seed, adapter in [(21, "vqa"), (22, "vqa-text"), (23, "none")]:  # vision-touching, frozen ViT, none
            image = images(1, seed=seed)[0]
            hits, misses = _counts(c)
            answers = [c.vqa(image, q, adapter=adapter)["answer"] for q in QUESTIONS]
            h, m = _counts(c)
            assert (h - hits, m - misses) == (4, 1), adapter
            assert all(answers)
        # the frozen-ViT adapter shares the frozen backbone's entry: no new ViT pass
        hits, misses = _counts(c)
        c.vqa(images(1, seed=23)[0], QUESTIONS[0], adapter="vqa-text")
        assert _counts(c) == (hits + 1, misses)


def test_cache_off_encodes_every_time():
    with running_server(fanout_world(), image_cache_mb=0) as url, Client(url) as c:
        image = images(1, seed=24)[0]
        first = [c.vqa(image, q)["answer"] for q in QUESTIONS]
        assert _counts(c) == (0, 0)  # not consulted at all
    with running_server(fanout_world()) as url, Client(url) as c:
        assert [c.vqa(image, q)["answer"] for q in QUESTIONS] == first  # cached or not, the same answers


def test_itm_rerank_over_a_gallery_uses_the_tokens_its_itc_pass_computed():
    imgs = images(6, seed=25)
    with running_server(fanout_world()) as url, Client(url) as c:
        c.create_gallery("g")
        c.add_items("g", [{"id": f"i{j}", "image": im} for j, im in enumerate(imgs)], adapter="retrieval")
        hits, misses = _counts(c)
        out = c.retrieve(text="a red circle", gallery="g", top_k=3, adapter="retrieval")
        assert len(out["results"]) == 3
        assert _counts(c) == (hits + 3, misses)  # the 3 re-ranked images: no ViT pass


def test_a_replaced_and_reloaded_adapter_is_never_served_stale_tokens():
    world = copy_world(fanout_world())
    image = images(1, seed=26)[0]
    ask = dict(question="what colour is the circle ?", candidates=["red", "two", "yes"])
    with running_server(world) as url, Client(url) as c:
        before = c.vqa(image, adapter="vqa", **ask)
        assert c.vqa(image, adapter="vqa", **ask) == before  # the second one from the cache
        shutil.copy(world / "adapters" / "vqa-b.safetensors", world / "adapters" / "vqa.safetensors")
        c.load_adapter("vqa")  # reload: same name, another file
        after = c.vqa(image, adapter="vqa", **ask)
    with running_server(world) as url, Client(url) as c:
        fresh = c.vqa(image, adapter="vqa", **ask)
    assert after["scores"] != before["scores"]
    assert after == fresh


def test_cache_is_lru_bounded_in_bytes():
    metrics = Metrics()
    entry = torch.zeros(10, 8)  # 320 bytes
    cache = ImageFeatureCache(1000, metrics)
    for i in range(3):
        cache.put((f"img{i}", None), entry)
    assert len(cache) == 3 and cache.nbytes == 960
    assert cache.get(("img0", None)) is not None  # img0 used: img1 is now the oldest
    cache.put(("img3", ("vqa", 1)), entry)
    assert cache.get(("img1", None)) is None and cache.get(("img0", None)) is not None
    assert cache.nbytes <= 1000
    cache.drop("vqa")
    assert cache.get(("img3", ("vqa", 1))) is None and len(cache) == 2
    cache.put(("huge", None), torch.zeros(1000))  # larger than the whole cache: not kept
    assert cache.get(("huge", None)) is None
