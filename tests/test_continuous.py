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
    """Row i joins at step joins[i] (into a free slot when there is one); every step each slot
    advances one token, a new row feeding the prompt first. -> generated ids per row."""
    n, sep, prompt = len(names), bb.config.text_config.sep_token_id, gs.prompt_ids(bb)
    slots, owner, out, step, compactions = None, [], {}, 0, []
    fed, tokens, trims = [0] * n, [[] for _ in range(n)], []
    while len(out) < n:
        new = [i for i in range(n) if joins[i] == step]
        free = [j for j, o in enumerate(owner) if o is None][: len(new)]
        if free:
            slots.place(bb, free, embeds[new[: len(free)]], routing=table.routing([names[i] for i in new[: len(free)]]))
            for j, i in zip(free, new):
                owner[j] = i
        if len(new) > len(free):
            rest = new[len(free):]
            more = gs.Slots.open(bb, embeds[rest], routing=table.routing([names[i] for i in rest]))
            slots = more if slots is None else slots.extend(more)
            owner += rest
        if not new and slots is not None and 2 * sum(o is not None for o in owner) < len(owner):
            keep = [j for j, o in enumerate(owner) if o is not None]  # free slots outnumber rows: drop them
            slots, owner = (slots.compact(keep) if keep else None), [owner[j] for j in keep]
            compactions.append(step)
        if any(o is not None for o in owner):
            logits = gs.step(bb, slots, routing=table.routing([names[o] if o is not None else None for o in owner]))
            live = [j for j, o in enumerate(owner) if o is not None]
            words = gs.choose(bb, logits[live], torch.tensor([len(tokens[owner[j]]) for j in live]),
                              torch.tensor([min_new[owner[j]] for j in live])).tolist()
            feed = slots.feed.tolist()
            for j, w in zip(live, words):
                i = owner[j]
                fed[i] += 1
                if fed[i] < len(prompt):
                    feed[j] = prompt[fed[i]]
                    continue
                tokens[i].append(w)
                feed[j] = w
                if w == sep or len(tokens[i]) >= max_new[i]:
                    out[i] = tokens[i]
                    owner[j] = None
                    slots.free([j])
            slots.feed = torch.tensor(feed)
        trims.append(slots is not None and slots.mask.shape[1] < step - min(joins))
        step += 1
    assert compactions and any(trims), (compactions, trims)  # both ways the layout changes are exercised
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
    joins = [0, 0, 0, 1, 2, 2, 3, 5, 8, 8, 13, 40]  # the last joins a batch of free slots only
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


def test_the_scheduler_setting_and_flag():
    from server.__main__ import parse
    from server.settings import Settings

    assert Settings.model_fields["caption_scheduler"].default == "batch"  # until the bench says otherwise
    assert parse(["--caption-scheduler", "continuous"])["caption_scheduler"] == "continuous"
    with pytest.raises(SystemExit):
        parse(["--caption-scheduler", "beams"])
