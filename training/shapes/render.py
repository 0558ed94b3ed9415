"""Scenes of the shapes world and their drawing with PIL.

A `Scene` is symbolic (groups of identical objects, each group on one side of the
image) plus everything needed to draw it (background, per-object boxes). Drawing
is done at twice the output size and box-filtered down, so edges are
anti-aliased and the pixels are a pure function of the scene.

Used by `training.shapes.world` and `training.shapes.pretrain`; not run on its own.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

# Saturated object colours, far from the neutral backgrounds below. RGB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 30),
    "green": (30, 170, 50),
    "blue": (35, 75, 230),
    "purple": (150, 40, 190),
}
SHAPES = ("circle", "square", "triangle", "star")
MAX_COUNT = 3  # objects per group; each group is one colour, one shape and one size
# Object side in units of the image side, per size word: ~10-12 px vs ~17-20 px at 64 px,
# far enough apart to read at a glance, and a large object still fits its cell (1/3).
SIZES: dict[str, tuple[float, float]] = {"small": (0.15, 0.19), "large": (0.27, 0.31)}
# Which half of the image a group occupies; "all" = the one group of a 1-group scene.
REGIONS = ("left", "right", "top", "bottom", "all")
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


@dataclasses.dataclass(frozen=True)
class Group:
    colour: str
    shape: str
    count: int
    region: str  # one of REGIONS
    size: str = "large"  # a key of SIZES


@dataclasses.dataclass(frozen=True)
class Scene:
    groups: tuple[Group, ...]  # 1 or 2 groups with distinct (colour, shape)
    size: int  # output side in pixels
    background: tuple[float, ...]  # (r, g, b, gradient_dx, gradient_dy, noise_std)
    # Per group, per object: (cx, cy, side) in units of the image side (0..1).
    boxes: tuple[tuple[tuple[float, float, float], ...], ...]
    jitter: tuple[tuple[int, int, int], ...]  # per-group colour jitter, RGB


def _slots(region: str) -> list[tuple[float, float, float, float]]:
    """Cells (x0, y0, x1, y1) in unit coordinates where objects of a group may sit:
    3 cells along a half of the image, or a 3x3 grid for the whole image. One
    object per cell, so objects never overlap and counts stay readable."""
    t = 1.0 / 3.0
    if region == "left":
        return [(0.0, i * t, 0.5, (i + 1) * t) for i in range(3)]
    if region == "right":
        return [(0.5, i * t, 1.0, (i + 1) * t) for i in range(3)]
    if region == "top":
        return [(i * t, 0.0, (i + 1) * t, 0.5) for i in range(3)]
    if region == "bottom":
        return [(i * t, 0.5, (i + 1) * t, 1.0) for i in range(3)]
    if region == "all":
        return [(i * t, j * t, (i + 1) * t, (j + 1) * t) for j in range(3) for i in range(3)]
    raise ValueError(f"unknown region {region!r}")


def place(rng: np.random.Generator, region: str, count: int, size: str = "large"
          ) -> tuple[tuple[float, float, float], ...]:
    """Boxes (cx, cy, side) for `count` objects of one group of `size` inside `region`."""
    cells = _slots(region)
    chosen = sorted(rng.choice(len(cells), size=count, replace=False).tolist())
    side = float(rng.uniform(*SIZES[size]))  # one side per group
    boxes = []
    for c in chosen:
        x0, y0, x1, y1 = cells[c]
        # centre anywhere that keeps the object inside its cell (cells are >= 1/3 wide)
        half = min(side, x1 - x0, y1 - y0) / 2
        cx = float(rng.uniform(x0 + half, x1 - half))
        cy = float(rng.uniform(y0 + half, y1 - half))
        boxes.append((cx, cy, min(side, x1 - x0, y1 - y0)))
    return tuple(boxes)


def sample_background(rng: np.random.Generator) -> tuple[float, ...]:
    """Neutral (low-saturation) base colour, a linear gradient and pixel noise."""
    grey = float(rng.uniform(60, 200))
    tint = rng.uniform(-18, 18, size=3)
    dx, dy = rng.uniform(-40, 40, size=2)
    noise = float(rng.uniform(0, 12))
    return (grey + tint[0], grey + tint[1], grey + tint[2], float(dx), float(dy), noise)


def _background_pixels(scene: Scene, side: int, seed: int) -> np.ndarray:
    r, g, b, dx, dy, noise = scene.background
    ramp = np.linspace(-0.5, 0.5, side, dtype=np.float32)
    grad = dx * ramp[None, :] + dy * ramp[:, None]  # (side, side)
    base = np.array([r, g, b], dtype=np.float32)[None, None, :] + grad[:, :, None]
    rng = np.random.default_rng(seed)  # noise comes from the scene's own seed
    base += rng.normal(0.0, noise, size=base.shape).astype(np.float32)
    return np.clip(base, 0, 255).astype(np.uint8)  # (side, side, 3)


def _polygon(shape: str, cx: float, cy: float, half: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = half * 0.85  # a square fills its box more than a circle; even out the area
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - half), (cx + half, cy + half * 0.8), (cx - half, cy + half * 0.8)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = half if k % 2 == 0 else half * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"no polygon for {shape!r}")


def render(scene: Scene, noise_seed: int) -> Image.Image:
    """The scene as an RGB image of scene.size x scene.size pixels."""
    side = scene.size * 2  # draw at 2x, then box-filter down: anti-aliased edges
    image = Image.fromarray(_background_pixels(scene, side, noise_seed), mode="RGB")
    draw = ImageDraw.Draw(image)
    for group, boxes, jitter in zip(scene.groups, scene.boxes, scene.jitter):
        rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[group.colour], jitter))
        for cx, cy, s in boxes:
            x, y, half = cx * side, cy * side, s * side / 2
            if group.shape == "circle":
                draw.ellipse((x - half, y - half, x + half, y + half), fill=rgb)
            else:
                draw.polygon(_polygon(group.shape, x, y, half), fill=rgb)
    return image.resize((scene.size, scene.size), Image.Resampling.BOX)
