"""Continuous (iteration-level) caption batching writes, token for token, the captions
today's batch path writes: rows joining a running decode mid-way, leaving at [SEP] or
their own max_new_tokens, mixed adapters; the library loop and a real server alike."""

from __future__ import annotations

import asyncio
import re

import pytest
import torch

from adapters import AdapterTable, routed, tasks
from adapters.backbone import Backbone, from_image_tokens
from adapters.backbone import greedy_steps as gs
from client import AsyncClient, Client
from tests.test_server_harness import images, running_server, tiny_world
from tests.tiny import random_images

NAMES = ["caption", None, "caption-lora", "caption-b", "caption-vlpet"]


def _backbone(sep_bias: float):
    """The tiny world's backbone, [SEP] made likelier so captions end at many different steps."""
    bb = Backbone.from_dirs(tiny_world() / "backbone")
    with torch.no_grad():
        bb.text_decoder.cls.predictions.bias[bb.config.text_config.sep_token_id] += sep_bias
    return bb


def _continuous(bb, table, embeds, names, joins, max_new, min_new):
    """Row i joins at step joins[i]; every step the running rows advance one token. -> ids per row."""
    n, sep = len(names), bb.config.text_config.sep_token_id
    rows, run, out, step = [], None, {}, 0
    tokens: dict[int, list[int]] = {}

    def pick(logits, idx):
        return gs.choose(bb, logits, torch.tensor([len(tokens[i]) for i in idx]),
                         torch.tensor([min_new[i] for i in idx]))

    while len(out) < n:
        if rows:
            run.last = pick(gs.step(bb, run, routing=table.routing([names[i] for i in rows])), rows)
            for i, t in zip(rows, run.last.tolist()):
                tokens[i].append(t)
        new = [i for i in range(n) if joins[i] == step]
        if new:
            tokens.update({i: [] for i in new})
            pre = gs.prefill(bb, embeds[new], routing=table.routing([names[i] for i in new]))
            first = pick(pre.logits, new)
            for i, t in zip(new, first.tolist()):
                tokens[i].append(t)
            run, rows = gs.merge(run, pre.rows, first), rows + new
        keep = []
        for j, i in enumerate(rows):
            if tokens[i][-1] == sep or len(tokens[i]) >= max_new[i]:
                out[i] = tokens[i]
            else:
                keep.append(j)
        if rows:
            run = run.select(torch.tensor(keep, dtype=torch.long))
            rows = [rows[j] for j in keep]
        step += 1
    return [out[i] for i in range(n)]


@pytest.mark.filterwarnings("ignore:Unfeasible length constraints")  # generate() on rows with max < min
def test_steps_equal_batch_generate_rows_joining_and_leaving():
    bb = _backbone(sep_bias=0.15)  # tiny random logits are close: 0.15 ends rows at 11-20 tokens
    world = tiny_world()
    table = AdapterTable(bb, capacity=8)
    for name in {n for n in NAMES if n}:
        table.load(name, world / "adapters" / f"{name}.safetensors")
    n = 12
    names = [NAMES[i % len(NAMES)] for i in range(n)]
    joins = [0, 0, 0, 1, 2, 2, 3, 5, 8, 8, 13, 20]
    max_new = [20, 7, 20, 3, 20, 11, 20, 1, 20, 20, 5, 20]
    sep = bb.config.text_config.sep_token_id
    px = tasks.pixels(bb, random_images(n, seed=11))
    with torch.inference_mode():
        r = table.routing(names)
        with routed(r):
            embeds = tasks.encode_image(bb, px)
        for min_new in (0, 4):  # captions use 0; the minimum is honoured as generate() honours it
            got = _continuous(bb, table, embeds, names, joins, max_new, [min_new] * n)
            prompt, _ = tasks.caption_prompt(bb, 1)
            for m in sorted(set(max_new)):  # today's path: one batch per max_new_tokens, same routing
                idx = [i for i in range(n) if max_new[i] == m]
                rr = table.routing([names[i] for i in idx])
                ids, mask = tasks.caption_prompt(bb, len(idx))
                with routed(rr):
                    ref = tasks._generate(bb, ids, mask, embeds[idx], 1, m, min_new)[:, prompt.shape[1]:]
                for row, i in zip(ref.tolist(), idx):
                    end = row.index(sep) + 1 if sep in row else len(row)
                    assert got[i] == row[:end], (i, names[i], got[i], row)
                if min_new == 0:
                    texts = from_image_tokens.captions(bb, embeds[idx], max_new_tokens=m, routing=rr)
                    assert texts == [bb.processor.tokenizer.decode(got[i], skip_special_tokens=True).strip()
                                     for i in idx]
            lengths = {len(t) for t in got}
            ended = sum(t[-1] == sep for t in got)
            assert len(lengths) >= 5 and ended >= 3, (lengths, ended)  # rows really leave at different steps
            if min_new:
                assert min(len(t) for t in got if t[-1] == sep) > min_new


def _joins(metrics: str) -> float:
    m = re.search(r"^unitrans_caption_joins_running_total (\S+)", metrics, re.M)
    return float(m.group(1)) if m else 0.0


def test_continuous_server_equals_batch_server():
    """A real server per scheduler: the continuous one's captions, sent in two overlapping waves
    (the second joins the first's decode), equal the batch server's sent one by one."""
    imgs = images(10, seed=4)
    adapters = [None, "none", "caption", "caption-b", "caption-lora", "caption-vlpet"]
    reqs = [dict(image=im, adapter=adapters[i % len(adapters)], max_new_tokens=[60, 6, 17, 2][i % 4])
            for i, im in enumerate(imgs)]
    reqs.append(dict(image=imgs[0], adapter="caption", num_beams=3, max_new_tokens=8))  # beams: the batch path
    with running_server(caption_scheduler="batch") as url, Client(url) as c:
        alone = [c.caption(**kw) for kw in reqs]

    async def waves(url):
        async with AsyncClient(url) as ac:
            first = [asyncio.create_task(ac.caption(**kw)) for kw in reqs[:5]]
            # the 2-token caption is back: the 60-token ones are mid-decode, the second wave joins them
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
            second = [asyncio.create_task(ac.caption(**kw)) for kw in reqs[5:]]
            return await asyncio.gather(*first, *second)

    with running_server(caption_scheduler="continuous", max_wait_ms=5) as url:
        together = asyncio.run(waves(url))
        with Client(url) as c:
            one_by_one = [c.caption(**kw) for kw in reqs[:4]]
            metrics = c.metrics()
    assert together == alone
    assert one_by_one == alone[:4]
    assert len({r["caption"] for r in alone[:6]}) >= 4  # the adapters really differ
    assert _joins(metrics) > 0, "no request joined a running decode"


def test_continuous_with_fewer_table_slots_than_adapters():
    """4 slots, 3 pinned by the task defaults: caption-b and caption-lora cannot run at once, so
    one waits for the other's rows to leave; every caption is still the batch server's."""
    imgs = images(6, seed=5)
    names = ["caption", "caption-b", "caption-lora", "none"]
    reqs = [dict(image=im, adapter=names[i % 4], max_new_tokens=[40, 3][i % 2]) for i, im in enumerate(imgs)] * 2
    with running_server(adapter_capacity=4) as url, Client(url) as c:
        alone = [c.caption(**kw) for kw in reqs]

    async def together(url):
        async with AsyncClient(url) as ac:
            return await asyncio.gather(*(ac.caption(**kw) for kw in reqs))

    with running_server(adapter_capacity=4, caption_scheduler="continuous", max_wait_ms=20) as url:
        assert asyncio.run(together(url)) == alone
    with running_server(adapter_capacity=3, caption_scheduler="continuous") as url, Client(url) as c:
        from client import OverloadedError

        with pytest.raises(OverloadedError) as exc:  # the three pinned defaults fill the table
            c.caption(images(1)[0], adapter="caption-b")
        assert exc.value.type == "adapter_table_full"
        assert c.caption(images(1)[0])["adapter"] == "caption"
