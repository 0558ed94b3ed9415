"""adapters.backbone.from_image_tokens: with the ViT run beforehand under the same routing,
every task gives what `predict` / `tasks` give from pixels, mixed adapters included."""

from __future__ import annotations

import torch

from adapters import AdapterTable, predict, routed, tasks
from adapters.backbone import Backbone, from_image_tokens
from tests.test_server_harness import tiny_world
from tests.tiny import random_images


def test_from_image_tokens_equals_predict_from_pixels():
    world = tiny_world()
    bb = Backbone.from_dirs(world / "backbone")
    table = AdapterTable(bb, capacity=8)
    for name in ("caption", "caption-lora", "vqa", "vqa-vlpet", "retrieval"):
        table.load(name, world / "adapters" / f"{name}.safetensors")
    px = tasks.pixels(bb, random_images(3, seed=7))
    ids = predict.question_ids(bb, ["is there a star ?", "what colour is the circle ?", "two"], 40)
    with torch.inference_mode():
        for names, task in [(["caption", None, "caption-lora"], "caption"), (["vqa", "vqa-vlpet", None], "vqa"),
                            (["retrieval", None, "retrieval"], "retrieve")]:
            r = table.routing(names)
            with routed(r):
                embeds = tasks.encode_image(bb, px)
            if task == "caption":
                assert from_image_tokens.captions(bb, embeds, routing=r) == predict.captions(bb, px, routing=r)
            elif task == "vqa":
                assert from_image_tokens.answers(bb, embeds, ids, routing=r) == predict.answers(bb, px, ids, routing=r)
                cands = [["yes", "no"], ["red", "blue", "two"], ["two"]]
                for a, b in zip(from_image_tokens.rank_answers(bb, embeds, ids, cands, routing=r),
                                predict.rank_answers(bb, px, ids, cands, routing=r)):
                    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            else:
                torch.testing.assert_close(from_image_tokens.itc_image(bb, embeds), tasks.itc_image(bb, px, routing=r))
                tok, mask = tasks.tokens(bb, ["a red circle", "two", "one yellow star"])
                torch.testing.assert_close(from_image_tokens.itm_logits(bb, embeds, tok, mask, routing=r),
                                           tasks.itm_logits(bb, px, tok, mask, routing=r))
