"""Concurrent requests naming different adapters get exactly the answers the same
requests get one by one, through a real server that batches them together."""

from __future__ import annotations

import asyncio
import re

import pytest

from client import AsyncClient, Client
from tests.test_server_harness import alone_then_together, images, running_server


def _requests(imgs):
    reqs = []
    cap_adapters = [None, "none", "caption", "caption-b", "caption-lora", "caption-vlpet"]
    vqa_adapters = [None, "none", "vqa", "vqa-b", "vqa-vlpet", "vqa-lora"]
    questions = ["what colour is the circle ?", "is there a star ?", "how many squares are there ?"]
    for i, im in enumerate(imgs):
        reqs.append(("caption", dict(image=im, adapter=cap_adapters[i % len(cap_adapters)])))
        reqs.append(("caption", dict(image=im, adapter=cap_adapters[(i + 2) % len(cap_adapters)], num_beams=3,
                                     max_new_tokens=8)))
        reqs.append(("vqa", dict(image=im, question=questions[i % 3], adapter=vqa_adapters[i % 6])))
        reqs.append(("vqa", dict(image=im, question=questions[(i + 1) % 3], adapter=vqa_adapters[(i + 1) % 6],
                                 candidates=["red", "blue", "two", "yes"])))
        reqs.append(("retrieve", dict(text="a red circle", images={f"i{j}": x for j, x in enumerate(imgs[:4])},
                                      top_k=3, adapter=["retrieval", "retrieval-b", "none"][i % 3])))
    return reqs


def _same(a, b, path="") -> None:
    """Equal strings/ids exactly; floats to 1e-4 (padding to a batch's longest text
    changes float summation order in the text encoder, not the answer)."""
    if isinstance(a, float):
        assert b == pytest.approx(a, abs=1e-4), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def test_concurrent_mixed_adapters_match_one_by_one():
    imgs = images(12, seed=3)
    reqs = _requests(imgs)
    with running_server(max_wait_ms=40, max_batch_size=16) as url:
        alone, mixed = alone_then_together(url, reqs)
        with Client(url) as c:
            metrics = c.metrics()
    for i, (a, m) in enumerate(zip(alone, mixed)):
        _same(a, m, f"request {i} {reqs[i][0]}")
    # the adapters really differ (else the comparison proves nothing) ...
    captions = {r["adapter"]: r["caption"] for (name, kw), r in zip(reqs, alone) if name == "caption"
                and "num_beams" not in kw}
    assert len(set(captions.values())) >= 4, captions
    # ... and requests really were batched together, with mixed adapters
    sums = {m.group(1): float(m.group(2)) for m in re.finditer(r'unitrans_batch_size_sum\{task="(\w+)"\} (\S+)', metrics)}
    counts = {m.group(1): float(m.group(2))
              for m in re.finditer(r'unitrans_batch_size_count\{task="(\w+)"\} (\S+)', metrics)}
    assert sums["caption"] / counts["caption"] > 1.2, (sums, counts)
    assert sums["vqa"] / counts["vqa"] > 1.2, (sums, counts)


def test_more_adapters_in_a_batch_than_table_slots():
    """4 slots, 3 pinned by the task defaults: a batch naming caption-b and caption-lora
    (one free slot for two) runs adapter by adapter, with the same answers."""
    imgs = images(6, seed=5)
    names = ["caption", "caption-b", "caption-lora", "none"]
    reqs = [dict(image=im, adapter=names[i % 4]) for i, im in enumerate(imgs)] * 2
    with running_server(adapter_capacity=4, max_wait_ms=60) as url:
        with Client(url) as c:
            alone = [c.caption(**kw) for kw in reqs]

        async def together():
            async with AsyncClient(url) as ac:
                return await asyncio.gather(*(ac.caption(**kw) for kw in reqs))

        assert asyncio.run(together()) == alone
        with Client(url) as c:
            splits = re.search(r"^unitrans_batch_splits_total (\S+)", c.metrics(), re.M)
        assert float(splits.group(1)) > 0


def test_full_table_of_pinned_adapters_is_a_503_and_serving_goes_on():
    with running_server(adapter_capacity=3) as url, Client(url) as c:  # the three pinned defaults fill it
        from client import OverloadedError

        with pytest.raises(OverloadedError) as exc:
            c.caption(images(1)[0], adapter="caption-b")
        assert exc.value.type == "adapter_table_full" and "pinned" in exc.value.message
        assert c.caption(images(1)[0])["adapter"] == "caption"
