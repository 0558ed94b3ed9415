"""Helpers for the adapter tests: a tiny backbone with its frozen twin, and adapters
whose vectors are set to random non-zero values so that adapters really differ."""

from __future__ import annotations

import copy

import torch

from adapters import tasks
from adapters.backbone import Backbone
from tests.tiny import random_images

QUESTIONS = ["what colour is the circle ?", "how many squares are there ?", "is there a star ?",
             "what colour is the star ?"]


def backbone_pair(config, processor, seed: int = 0) -> tuple[Backbone, Backbone]:
    """(bb, frozen): the same random weights; `frozen` is never injected, the reference."""
    torch.manual_seed(seed)
    bb = Backbone.from_config(config, processor)
    return bb, copy.deepcopy(bb)


def randomize(adapter, seed: int, scale: float = 0.5) -> None:
    """Non-zero vectors (and LoRA B), so each adapter moves the outputs its own way."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            noise = torch.randn(p.shape, generator=gen).to(p)
            if name.startswith("pair."):
                continue  # keep the drawn pair (train_ab adapters still differ through their vectors)
            if "lam_a" in name or "alpha" in name or name == "scale":
                p.copy_(1.0 + scale * noise)
            else:
                p.copy_(scale * noise)


def inputs(bb, n: int, seed: int = 0):
    px = tasks.pixels(bb, random_images(n, seed=seed))
    qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    ids, mask = tasks.tokens(bb, qs)
    return px, ids, mask
