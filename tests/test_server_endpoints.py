"""Every endpoint through the client, against a real server: tasks, adapters,
galleries, health, metrics, OpenAPI, the API key, and the async client."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from client import (AsyncClient, AuthenticationError, Client, ConflictError, NotFoundError, ValidationError)
from tests.test_server_harness import images, running_server, tiny_world

IMGS = images(6, seed=11)


@pytest.fixture(scope="module")
def adapter_dir():
    d = Path(tempfile.mkdtemp(prefix="unitrans-adapters-"))
    shutil.copytree(tiny_world() / "adapters", d, dirs_exist_ok=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def url(adapter_dir):
    with running_server(adapters=[adapter_dir]) as u:
        yield u


@pytest.fixture()
def c(url):
    with Client(url) as client:
        yield client


def test_health_ready_metrics_docs(c, url):
    assert c.health() == {"status": "ok"}
    ready = c.ready()
    assert ready["ready"] and ready["tasks"] == ["caption", "retrieve", "vqa"] and len(ready["fingerprint"]) == 16
    c.caption(IMGS[0])
    metrics = c.metrics()
    for name in ('unitrans_requests_total{route="/caption",status="200"}', "unitrans_request_seconds_bucket", "unitrans_batch_size_bucket",
                 "unitrans_queue_depth", 'unitrans_adapter_requests_total{adapter="caption",task="caption"}'):
        assert name in metrics, name
    assert httpx.get(url + "/docs", timeout=10).status_code == 200
    paths = httpx.get(url + "/openapi.json", timeout=10).json()["paths"]
    for path in ("/caption", "/vqa", "/retrieve", "/adapters", "/adapters/{name}", "/galleries",
                 "/galleries/{name}/items", "/healthz", "/readyz", "/metrics"):
        assert path in paths, path
    assert "multipart/form-data" in paths["/caption"]["post"]["requestBody"]["content"]


def test_caption_default_named_none_multipart_beams(c):
    default = c.caption(IMGS[0])
    assert default["adapter"] == "caption"  # the task default, pinned at startup
    assert c.caption(IMGS[0], adapter="caption") == default
    frozen = c.caption(IMGS[0], adapter="none")
    assert frozen["adapter"] == "none" and frozen["caption"] != default["caption"]
    assert c.caption(IMGS[0], multipart=True) == default
    beams = c.caption(IMGS[0], adapter="caption-b", num_beams=3, max_new_tokens=5)
    assert beams["adapter"] == "caption-b" and len(beams["caption"].split()) <= 5


def test_vqa_generate_and_rank(c):
    out = c.vqa(IMGS[1], "what colour is the circle ?")
    assert out["adapter"] == "vqa" and isinstance(out["answer"], str) and "scores" not in out
    ranked = c.vqa(IMGS[1], "what colour is the circle ?", adapter="vqa-b", candidates=["red", "blue", "green"])
    assert set(ranked["scores"]) == {"red", "blue", "green"}
    assert ranked["answer"] == max(ranked["scores"], key=ranked["scores"].get)
    assert all(s < 0 for s in ranked["scores"].values())  # log-likelihoods
    multi = c.vqa(IMGS[1], "what colour is the circle ?", adapter="vqa-b", candidates=["red", "blue", "green"],
                  multipart=True)
    assert multi["answer"] == ranked["answer"]
    assert multi["scores"] == pytest.approx(ranked["scores"], abs=1e-5)


def test_retrieve_all_four_ways(c):
    inline = {f"img{i}": im for i, im in enumerate(IMGS)}
    t2i = c.retrieve(text="a red circle left of a blue square", images=inline, top_k=3)
    assert t2i["direction"] == "text_to_image" and t2i["adapter"] == "retrieval"
    scores = [h["score"] for h in t2i["results"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert all(h["score"] != h["itc"] for h in t2i["results"])  # re-ranked: ITM logit(match) + ITC cosine
    itc_only = c.retrieve(text="a red circle left of a blue square", images=inline, top_k=6, rerank=False)
    itcs = [h["itc"] for h in itc_only["results"]]
    assert itcs == sorted(itcs, reverse=True)
    # the re-ranked 3 are the ITC top 3
    assert {h["id"] for h in t2i["results"]} == {h["id"] for h in itc_only["results"][:3]}

    texts = {"a": "a red circle", "b": "two green triangles", "c": "one yellow star", "d": "blue"}
    i2t = c.retrieve(image=IMGS[2], texts=texts, top_k=4, adapter="retrieval-b")
    assert i2t["direction"] == "image_to_text" and i2t["adapter"] == "retrieval-b"
    assert sorted(h["id"] for h in i2t["results"]) == ["a", "b", "c", "d"]

    c.create_gallery("e2e-images")
    c.add_items("e2e-images", [{"id": k, "image": v, "metadata": {"n": i}} for i, (k, v) in enumerate(inline.items())])
    via_gallery = c.retrieve(text="a red circle left of a blue square", gallery="e2e-images", top_k=3)
    assert [h["id"] for h in via_gallery["results"]] == [h["id"] for h in t2i["results"]]
    assert [h["score"] for h in via_gallery["results"]] == pytest.approx(scores, abs=1e-5)
    assert all("metadata" in h for h in via_gallery["results"])

    c.create_gallery("e2e-texts", kind="text")
    c.add_items("e2e-texts", [{"id": k, "text": v} for k, v in texts.items()])
    via_texts = c.retrieve(image=IMGS[2], gallery="e2e-texts", top_k=4, adapter="retrieval-b")
    assert [h["id"] for h in via_texts["results"]] == [h["id"] for h in i2t["results"]]
    with pytest.raises(ValidationError):  # a text query against a text gallery
        c.retrieve(text="a red circle", gallery="e2e-texts")


def test_gallery_crud(c):
    info = c.create_gallery("crud")
    assert info == {"name": "crud", "kind": "image", "size": 0, "adapters": [], "index": "exact", "indexed": []}
    with pytest.raises(ConflictError):
        c.create_gallery("crud")
    added = c.add_items("crud", [{"id": "a", "image": IMGS[0]}, {"id": "b", "image": IMGS[1]}])
    assert added["added"] == ["a", "b"] and added["size"] == 2
    replaced = c.add_items("crud", [{"id": "a", "image": IMGS[2]}, {"id": "c", "image": IMGS[3]}], adapter="none")
    assert replaced["added"] == ["c"] and replaced["replaced"] == ["a"] and replaced["size"] == 3
    assert c.gallery("crud")["adapters"] == ["none", "retrieval"]
    assert [it["id"] for it in c.gallery_items("crud")["items"]] == ["a", "b", "c"]
    assert "crud" in [g["name"] for g in c.galleries()["galleries"]]
    # vectors for an adapter never used on this gallery are computed at its first search
    hits = c.retrieve(text="two green triangles", gallery="crud", adapter="retrieval-b", top_k=3)["results"]
    assert sorted(h["id"] for h in hits) == ["a", "b", "c"]
    assert "retrieval-b" in c.gallery("crud")["adapters"]
    removed = c.delete_items("crud", ["b", "zzz"])
    assert removed["removed"] == ["b"] and removed["size"] == 2
    assert c.delete_gallery("crud") == {"deleted": "crud"}
    with pytest.raises(NotFoundError):
        c.gallery("crud")


def test_adapters_list_load_unload_and_failed_load(c, adapter_dir):
    listed = {a["name"]: a for a in c.adapters()["adapters"]}
    assert set(listed) >= {"caption", "caption-b", "caption-lora", "vqa", "vqa-b", "retrieval", "retrieval-b"}
    cap = listed["caption"]
    assert cap["loaded"] and cap["pinned"] and cap["kind"] == "vcra" and cap["task"] == "caption"
    assert cap["rank"] == 4 and cap["trainable_params"] > 0 and cap["bytes"] > 0 and cap["default_for"] == ["caption"]
    assert listed["caption-lora"]["kind"] == "lora"
    # the real kind: a vqa VCRA has QASN (the fusion encoder runs), a VL-PET file says its granularity
    assert listed["vqa"]["kind"] == "vcra-qasn" and listed["caption-vlpet"]["kind"] == "vl-pet-large"
    assert listed["vqa-vlpet"]["kind"] == "vl-pet-small"

    before = c.caption(IMGS[4], adapter="caption-b")
    info = c.load_adapter("caption-b", pin=True)
    assert info["loaded"] and info["pinned"]
    assert c.unload_adapter("caption-b")["loaded"] is False
    with pytest.raises(NotFoundError):
        c.unload_adapter("caption-b")
    assert c.caption(IMGS[4], adapter="caption-b") == before  # loaded again on demand, same answer

    # a corrupt file under a served name: the load fails with a message and serving is untouched
    good = (adapter_dir / "caption-b.safetensors").read_bytes()
    (adapter_dir / "caption-b.safetensors").write_bytes(good[: len(good) // 2])
    try:
        with pytest.raises(ValidationError) as exc:
            c.load_adapter("caption-b")
        assert "caption-b" in exc.value.message
        assert c.caption(IMGS[4], adapter="caption-b") == before  # the loaded copy still serves
    finally:
        (adapter_dir / "caption-b.safetensors").write_bytes(good)
    with pytest.raises(ValidationError):
        c.load_adapter("none")


def test_async_client(url):
    async def go():
        async with AsyncClient(url) as ac:
            return await asyncio.gather(ac.caption(IMGS[5]), ac.vqa(IMGS[5], "is there a star ?"), ac.adapters(),
                                        ac.health())

    cap, vqa, adapters, health = asyncio.run(go())
    with Client(url) as c:
        assert cap == c.caption(IMGS[5]) and vqa == c.vqa(IMGS[5], "is there a star ?")
    assert adapters["capacity"] == 32 and health == {"status": "ok"}


def test_api_key():
    with running_server(api_key="s3cret") as url:
        with Client(url) as anon:
            assert anon.health() == {"status": "ok"}  # liveness and readiness stay open
            assert anon.ready()["ready"]
            for call in (lambda: anon.caption(IMGS[0]), anon.adapters, anon.metrics, anon.galleries):
                with pytest.raises(AuthenticationError):
                    call()
        with Client(url, api_key="wrong") as bad, pytest.raises(AuthenticationError):
            bad.caption(IMGS[0])
        with Client(url, api_key="s3cret") as good:
            assert good.caption(IMGS[0])["adapter"] == "caption"


def test_unusable_defaults_fall_back_to_the_frozen_backbone(tmp_path):
    """Another backbone with the same adapter dir (e.g. a real BLIP beside the shipped
    adapters): requests naming no adapter run frozen; naming one gets a clear 422."""
    import torch

    from adapters.backbone import Backbone
    from tests.tiny import tiny_config, tiny_processor

    processor = tiny_processor()
    torch.manual_seed(1)
    Backbone.from_config(tiny_config(processor.tokenizer), processor).save_pretrained(tmp_path / "other")
    with running_server(backbone=[tmp_path / "other"], default_vqa_adapter="retrieval") as url, Client(url) as c:
        assert c.ready()["defaults"] == {"caption": "none", "retrieve": "none", "vqa": "none",
                                          "video-retrieve": "none", "video-vqa": "none"}
        assert c.caption(IMGS[0])["adapter"] == "none"
        with pytest.raises(ValidationError) as exc:
            c.caption(IMGS[0], adapter="caption")
        assert "made for backbone" in exc.value.message
    with running_server(default_vqa_adapter="retrieval") as url, Client(url) as c:
        assert c.ready()["defaults"] == {"caption": "caption", "retrieve": "retrieval", "vqa": "none",
                                          "video-retrieve": "retrieval", "video-vqa": "none"}
        assert c.vqa(IMGS[0], "is there a star ?")["adapter"] == "none"
