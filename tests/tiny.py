"""Tiny BLIP configs, processors and images for tests and benchmarks (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BlipConfig

from adapters.backbone import Backbone
from training.shapes.world import generate, load_texts
from training.tokenizer import blip_text_config_ids, build_processor, build_tokenizer

WORDS = [
    "a picture of", "a red circle left of a blue square", "two green triangles", "one yellow star",
    "what colour is the circle ?", "how many squares are there ?", "is there a star ?",
    "yes", "no", "red", "blue", "green", "yellow", "one", "two", "three", "above", "below", "right",
]
IMAGE_SIZE = 32


def tiny_processor(image_size: int = IMAGE_SIZE):
    return build_processor(build_tokenizer(WORDS), image_size)


def tiny_config(tokenizer, hidden: int = 32, layers: int = 2, heads: int = 4, image_size: int = IMAGE_SIZE,
                patch: int = 8) -> BlipConfig:
    ids = blip_text_config_ids(tokenizer)
    return BlipConfig(
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch,
                           initializer_range=0.02),
        text_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=64, encoder_hidden_size=hidden,
                         **ids),
        image_text_hidden_size=16,
    )


def random_images(n: int, size: int = IMAGE_SIZE, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def tiny_shapes_world(root: Path, seed: int, n: int, **world) -> Path:
    """A generated shapes world of `n` images under `root` (`world`: more `generate` options,
    e.g. clips=40, frames=4), plus `root / "bb"`: a tiny random backbone (32 px) whose
    tokenizer knows every word of that world. Returns root."""
    generate(root, seed=seed, n=n, **world)
    processor = build_processor(build_tokenizer(load_texts(root)), image_size=IMAGE_SIZE)
    torch.manual_seed(0)
    Backbone.from_config(tiny_config(processor.tokenizer), processor).save_pretrained(root / "bb")
    return root
