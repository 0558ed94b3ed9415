"""/vqa through a real server: questions of different token lengths share batched calls
and each gets exactly the answer it gets alone (generation with beams, candidate
ranking, mixed adapters); generation options num_beams and max_new_tokens, JSON and
multipart, with their limits."""

from __future__ import annotations

import asyncio
import base64
import re

import httpx
import pytest

from client import AsyncClient, Client, ValidationError
from tests.test_server_harness import images, running_server
from tests.test_server_mixed import _same

QUESTIONS = ["red", "is there a star ?", "what colour is the circle ?", "two",
             "a red circle left of a blue square", "how many squares are there ?"]  # 3 to 10 tokens


def _requests(imgs) -> list[dict]:
    adapters = [None, "vqa-b", "none"]
    reqs = []
    for i, im in enumerate(imgs):
        q = QUESTIONS[i % len(QUESTIONS)]
        reqs.append(dict(image=im, question=q, adapter=adapters[i % 3]))  # defaults: 3 beams, <= 10 tokens
        reqs.append(dict(image=im, question=QUESTIONS[(i + 2) % len(QUESTIONS)], adapter=adapters[(i + 1) % 3],
                         num_beams=1, max_new_tokens=5))
        reqs.append(dict(image=im, question=QUESTIONS[(i + 3) % len(QUESTIONS)], adapter=adapters[i % 3],
                         candidates=["red", "two", "yes"][: 1 + i % 3]))
    return reqs


def _batches(metrics: str) -> tuple[float, float]:
    """(rows, batches) the vqa batcher ran so far."""
    rows = re.search(r'unitrans_batch_size_sum\{task="vqa"\} (\S+)', metrics)
    count = re.search(r'unitrans_batch_size_count\{task="vqa"\} (\S+)', metrics)
    return float(rows.group(1)), float(count.group(1))


def test_questions_of_any_length_share_calls_and_match_alone():
    imgs = images(8, seed=41)
    reqs = _requests(imgs)
    with running_server(max_wait_ms=60, max_batch_size=32) as url:
        with Client(url) as c:
            alone = [c.vqa(**kw) for kw in reqs]
            rows0, batches0 = _batches(c.metrics())

        async def together():
            async with AsyncClient(url) as ac:
                return await asyncio.gather(*(ac.vqa(**kw) for kw in reqs))

        mixed = asyncio.run(together())
        with Client(url) as c:
            rows1, batches1 = _batches(c.metrics())
    for i, (a, m) in enumerate(zip(alone, mixed)):
        _same(a, m, f"request {i}")
        assert a["answer"], f"request {i}: empty answer"
    generated = [r["answer"] for kw, r in zip(reqs, alone) if "candidates" not in kw]
    assert len(set(generated)) >= 3, generated  # answers differ, else equality proves little
    # 3 batch keys (defaults, greedy <= 5, ranking); keyed by length too it would take
    # one call per (key, length): at least 12 here (4 lengths x 3 keys)
    assert rows1 - rows0 == len(reqs)
    assert batches1 - batches0 <= 6, (rows1 - rows0, batches1 - batches0)


@pytest.fixture(scope="module")
def url():
    with running_server() as u:
        yield u


def test_generation_options(url):
    im = images(1, seed=42)[0]
    with Client(url) as c:
        default = c.vqa(im, "what colour is the circle ?")
        assert default == c.vqa(im, "what colour is the circle ?", num_beams=3, max_new_tokens=10)  # the defaults
        one = c.vqa(im, "what colour is the circle ?", num_beams=1, max_new_tokens=1)
        assert one["answer"] and " " not in one["answer"]  # exactly one token: never ""
        multi = c.vqa(im, "what colour is the circle ?", num_beams=2, max_new_tokens=4, multipart=True)
        assert multi == c.vqa(im, "what colour is the circle ?", num_beams=2, max_new_tokens=4)
        with pytest.raises(ValidationError) as exc:
            c.vqa(im, "what colour is the circle ?", max_new_tokens=100)
        assert exc.value.message == "max_new_tokens: 100 is over the limit of 64"


@pytest.mark.parametrize("fields, named", [
    ({"num_beams": 9}, "num_beams"),                     # over max_beams_limit (8)
    ({"max_new_tokens": 65}, "max_new_tokens"),          # over max_new_tokens_limit (64)
    ({"num_beams": 0}, "num_beams"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"num_beams": "many"}, "num_beams"),
    ({"num_beams": 2, "candidates": ["red", "blue"]}, "num_beams"),    # ranking generates nothing
    ({"max_new_tokens": 3, "candidates": ["red"]}, "max_new_tokens"),
])
@pytest.mark.parametrize("multipart", [False, True])
def test_bad_generation_options_are_422_naming_the_field(url, fields, named, multipart):
    im = images(1, seed=43)[0]
    body = {"question": "is there a star ?", **fields}
    if multipart:
        data = {k: (v if k == "candidates" else str(v)) for k, v in body.items()}
        r = httpx.post(f"{url}/vqa", data=data, files={"image": ("im.png", im)})
    else:
        r = httpx.post(f"{url}/vqa", json={"image": base64.b64encode(im).decode(), **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith(named), r.json()
