"""The example images shipped in `examples/`: scenes of the shapes world chosen for the
README's questions, drawn by the world's own renderer.

    python -m training.shapes.examples --out examples      # rewrites examples/*.png

Each scene is fixed (groups written out here, placement and background from a fixed
seed), so the files are a pure function of this module and `training.shapes.render`.
They are drawn at the world's image size (64 px), the size the shipped backbone saw.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.shapes.language import canonical_captions
from training.shapes.render import Group, Scene, place, render, sample_background

SIZE = 64  # training.shapes.world's default image size


@dataclass(frozen=True)
class Example:
    name: str  # file stem under examples/
    groups: tuple[Group, ...]
    seed: int  # placement, background and pixel noise

    def scene(self) -> Scene:
        rng = np.random.default_rng([self.seed, 7])
        boxes = tuple(place(rng, g.region, g.count, g.size) for g in self.groups)
        no_jitter = tuple((0, 0, 0) for _ in self.groups)  # the palette's exact colours
        return Scene(self.groups, SIZE, sample_background(rng), boxes, no_jitter)

    def caption(self) -> str:
        """The world's canonical caption of the scene ("two red triangles left of one blue circle")."""
        return canonical_captions(self.scene())[0]


EXAMPLES = (
    Example("triangles-and-circle", (Group("red", "triangle", 2, "left"), Group("blue", "circle", 1, "right")), 3),
    Example("green-squares", (Group("green", "square", 3, "all"),), 1),
    Example("star-above-circles", (Group("yellow", "star", 1, "top"), Group("purple", "circle", 2, "bottom")), 2),
)


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ex in EXAMPLES:
        path = out / f"{ex.name}.png"
        render(ex.scene(), noise_seed=ex.seed).save(path, optimize=True)
        paths.append(path)
    return paths


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m training.shapes.examples", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="examples", help="directory to write <name>.png into")
    args = p.parse_args(argv)
    for ex, path in zip(EXAMPLES, write(Path(args.out))):
        print(f"{path}: {ex.caption()}")


if __name__ == "__main__":
    main(sys.argv[1:])
