"""Evaluation is serving: N questions, N caption images and retrieval queries sent to a
real server get the answers, captions and rankings that `training.evaluate`'s prediction
path computes offline for the same files, adapters and defaults (its batches cut
differently from the server's: an answer never depends on its batch)."""

from __future__ import annotations

import asyncio

import pytest

from adapters.backbone import Backbone
from client import AsyncClient
from tests.test_server_harness import running_server, tiny_world
from tests.tiny import random_images
from training import evaluate
from training.adapters_io import load_for_eval
from training.data import CaptionDataset, RetrievalDataset, VQADataset

N = 6
QUESTIONS = ["red", "is there a star ?", "what colour is the circle ?", "two",
             "a red circle left of a blue square", "how many squares are there ?"]
TEXTS = ["a red circle", "two green triangles", "one yellow star", "blue", "a red circle left of a blue square",
         "three"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-serving")
    for i, im in enumerate(random_images(N, seed=51)):
        im.save(root / f"{i}.png")
    files = [f"{i}.png" for i in range(N)]
    return {
        "root": root,
        "blobs": [(root / f).read_bytes() for f in files],
        "caption": CaptionDataset([{"image": f, "caption": "x", "image_id": i} for i, f in enumerate(files)], root),
        "vqa": VQADataset([{"question_id": i, "image": f, "question": q, "answer": ["yes"]}
                           for i, (f, q) in enumerate(zip(files, QUESTIONS))], root),
        "retrieval": RetrievalDataset([{"image": f, "caption": [t]} for f, t in zip(files, TEXTS)], root),
    }


def _offline(adapter: str):
    """(model, route) as `python -m training.evaluate --adapter <file>` builds them."""
    bb = Backbone.from_dirs(tiny_world() / "backbone")
    model, route, _, _ = load_for_eval(bb, str(tiny_world() / "adapters" / f"{adapter}.safetensors"))
    return model, route


@pytest.fixture(scope="module")
def served(data):
    blobs = data["blobs"]
    with running_server(max_wait_ms=40) as url:
        async def calls():
            async with AsyncClient(url) as c:  # concurrent: the server batches them
                caps = asyncio.gather(*(c.caption(b) for b in blobs))
                answers = asyncio.gather(*(c.vqa(b, q) for b, q in zip(blobs, QUESTIONS)))
                return await caps, await answers

        caps, answers = asyncio.run(calls())

        async def queries():
            async with AsyncClient(url) as c:
                images = {str(i): b for i, b in enumerate(blobs)}
                texts = {str(i): t for i, t in enumerate(TEXTS)}
                t2i = [await c.retrieve(text=t, images=images, top_k=N) for t in TEXTS[:2]]
                i2t = [await c.retrieve(image=b, texts=texts, top_k=N) for b in blobs[:2]]
                return t2i, i2t

        t2i, i2t = asyncio.run(queries())
    assert {r["adapter"] for r in caps + answers} == {"caption", "vqa"}
    return {"captions": [r["caption"] for r in caps], "answers": [r["answer"] for r in answers], "t2i": t2i,
            "i2t": i2t}


def test_captions_served_equal_evaluated(data, served):
    model, route = _offline("caption")
    offline = evaluate.predict_captions(model, data["caption"], route, batch_size=4)
    assert [offline[f"{i}.png"] for i in range(N)] == served["captions"]


def test_answers_served_equal_evaluated(data, served):
    model, route = _offline("vqa")
    offline = evaluate.predict_answers(model, data["vqa"], route, batch_size=4)  # batches of mixed lengths
    assert offline == served["answers"]
    assert all(offline) and len(set(offline)) >= 2, offline


def test_rankings_served_equal_evaluated(data, served):
    model, route = _offline("retrieval")
    i2t, t2i, _ = evaluate.retrieval_scores(model, data["retrieval"], route, batch_size=4, k_test=N)
    for q, response in enumerate(served["t2i"]):
        order = t2i[q].argsort(descending=True).tolist()
        assert [h["id"] for h in response["results"]] == [str(i) for i in order], f"text query {q}"
        assert [h["score"] for h in response["results"]] == pytest.approx(t2i[q, order].tolist(), abs=1e-4)
    for q, response in enumerate(served["i2t"]):
        order = i2t[q].argsort(descending=True).tolist()
        assert [h["id"] for h in response["results"]] == [str(i) for i in order], f"image query {q}"
        assert [h["score"] for h in response["results"]] == pytest.approx(i2t[q, order].tolist(), abs=1e-4)
