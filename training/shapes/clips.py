"""Clips of the shapes world: a start scene of the image world plus ONE event over F frames.

    rng, clip, sibling = clip_pair(seed=0, pool=POOL_CLIP_DOWNSTREAM, split="train", index=7, size=64)
    frames = render_clip(clip, noise_seed=1)     # F PIL images
    frame_scenes(clip)                            # F symbolic scenes (what `holds` is checked on)

Events (`Event.kind`):
* move: one group slides in a direction (left/right/up/down) by `shift` image sides, linearly
  from frame 0 to frame F-1, inside the half of the image the group occupies (its region),
  so objects never leave the frame, never overlap the other group, and every static claim
  of the image world (sides, relations, counts, colours) holds on every frame.
* appear: one group is absent before frame `at`, present from it on.
* turn: one group has its start colour before frame `at` and `Event.colour` from it on.
`at` lies in [F//4 + 1, F - F//4 - 1]: any uniform sample of >= 2 frames
(`adapters.backbone.frames.sample_indices`) shows the state before and after.

Sibling clips differ in one thing, a hard negative: a turn sibling turns to another colour,
an appear sibling's group has another colour, and a move sibling is the same clip played
backwards (the opposite direction over the very same frames). Frame ORDER is the only
difference there: BLIP's video transfer (frames' tokens concatenated, mean [CLS] for ITC,
no temporal embedding) is blind to it, so these pairs measure whether a temporal module is
needed (tests/test_clips.py shows the invariance).

Determinism and disjoint splits as in the image world: unit `index` of (pool, split) draws
from `np.random.default_rng([seed, pool, split, index])`, and the clip pools have their own
ids (2, 3), so clip splits are disjoint from each other and from image units for every --n.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from training.shapes.render import COLOURS, Group, Scene, render
from training.shapes.world import SPLITS, sample_scene

POOL_CLIP_PRETRAIN, POOL_CLIP_DOWNSTREAM = 2, 3  # the image world uses 0 and 1
DEFAULT_FRAMES = 8
EVENT_KINDS = {"move": 0.5, "appear": 0.25, "turn": 0.25}
DIRECTIONS = ("left", "right", "up", "down")
OPPOSITE_DIRECTION = {"left": "right", "right": "left", "up": "down", "down": "up"}
_STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # unit coords, y down
# (x0, y0, x1, y1) of each region in image sides: a moving group stays inside its own
_RECT = {"left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0), "top": (0.0, 0.0, 1.0, 0.5),
         "bottom": (0.0, 0.5, 1.0, 1.0), "all": (0.0, 0.0, 1.0, 1.0)}
SHIFT = (0.15, 0.35)  # distance moved over the clip, image sides (>= ~10 px at 64 px)

__all__ = ["Clip", "Event", "clip_pair", "sample_clip", "sibling_of", "frame_scene", "frame_scenes", "render_clip",
           "POOL_CLIP_PRETRAIN", "POOL_CLIP_DOWNSTREAM", "DIRECTIONS", "DEFAULT_FRAMES"]


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str  # a key of EVENT_KINDS
    group: int  # index into the start scene's groups
    direction: str | None = None  # move: one of DIRECTIONS
    shift: float = 0.0  # move: distance in image sides over the whole clip
    to: tuple = ()  # move: the group's boxes (cx, cy, side) at the last frame (frame 0's are the scene's)
    colour: str | None = None  # turn: the colour the group turns to
    at: int = 0  # appear / turn: first frame with the new state


@dataclasses.dataclass(frozen=True)
class Clip:
    """`scene`: frame 0, except that an appearing group is listed (with its place) although
    hidden before `event.at`; `frames`: F."""

    scene: Scene
    event: Event
    frames: int

    @property
    def actor(self) -> Group:
        """The event's group as it is at frame 0 (start colour for a turn)."""
        return self.scene.groups[self.event.group]


def _without(scene: Scene, i: int) -> Scene:
    keep = [k for k in range(len(scene.groups)) if k != i]
    return Scene(tuple(scene.groups[k] for k in keep), scene.size, scene.background,
                 tuple(scene.boxes[k] for k in keep), tuple(scene.jitter[k] for k in keep))


def frame_scene(clip: Clip, k: int) -> Scene:
    """The symbolic scene shown at frame k (0 <= k < F)."""
    e, s = clip.event, clip.scene
    if e.kind == "move":
        last = clip.frames - 1
        if k in (0, last):
            path = s.boxes[e.group] if k == 0 else e.to
        else:  # (a (F-1-k) + b k) / (F-1) is symmetric in (a, k) <-> (b, F-1-k) to the last bit, so the
            # sibling played backwards (sibling_of) has exactly these frames in reverse order
            path = tuple(tuple((a * (last - k) + b * k) / last for a, b in zip(p0[:2], p1[:2])) + (p0[2],)
                         for p0, p1 in zip(s.boxes[e.group], e.to))
        boxes = list(s.boxes)
        boxes[e.group] = path
        return dataclasses.replace(s, boxes=tuple(boxes))
    if e.kind == "appear":
        return _without(s, e.group) if k < e.at else s
    if e.kind == "turn":
        if k < e.at:
            return s
        groups = list(s.groups)
        groups[e.group] = dataclasses.replace(groups[e.group], colour=e.colour)
        return dataclasses.replace(s, groups=tuple(groups))
    raise ValueError(f"unknown event kind {e.kind!r}")


def frame_scenes(clip: Clip) -> list[Scene]:
    return [frame_scene(clip, k) for k in range(clip.frames)]


def render_clip(clip: Clip, noise_seed: int) -> list[Image.Image]:
    """F RGB frames; one background noise for the whole clip (a still camera)."""
    return [render(s, noise_seed) for s in frame_scenes(clip)]


# ---------------------------------------------------------------- sampling


def _line_place(rng: np.random.Generator, rect, count: int, side: float):
    """Boxes (cx, cy, side) for `count` objects in a row of equal cells along the longer
    axis of `rect` (then the other), one object per cell; None if they do not fit."""
    x0, y0, x1, y1 = rect
    w, h = x1 - x0, y1 - y0
    for along_x in (w >= h, w < h):
        cw, ch = (w / count, h) if along_x else (w, h / count)
        if min(cw, ch) < side:
            continue
        boxes = []
        for i in range(count):
            cx0, cy0 = (x0 + i * cw, y0) if along_x else (x0, y0 + i * ch)
            boxes.append((float(rng.uniform(cx0 + side / 2, cx0 + cw - side / 2)),
                          float(rng.uniform(cy0 + side / 2, cy0 + ch - side / 2)), side))
        return tuple(boxes)
    return None


def _start_rect(region: str, direction: str, shift: float):
    """Where a group may start so that moving `shift` in `direction` keeps it in its region."""
    x0, y0, x1, y1 = _RECT[region]
    dx, dy = (shift * c for c in _STEP[direction])
    return (x0 - min(dx, 0.0), y0 - min(dy, 0.0), x1 - max(dx, 0.0), y1 - max(dy, 0.0))


def _try_move(rng: np.random.Generator, scene: Scene, i: int, frames: int) -> Clip | None:
    g, side = scene.groups[i], scene.boxes[i][0][2]
    for d in rng.permutation(len(DIRECTIONS)):
        direction = DIRECTIONS[int(d)]
        for shift in (float(rng.uniform(*SHIFT)), SHIFT[0]):
            boxes = _line_place(rng, _start_rect(g.region, direction, shift), g.count, side)
            if boxes is not None:
                new = list(scene.boxes)
                new[i] = boxes
                dx, dy = (shift * c for c in _STEP[direction])
                to = tuple((cx + dx, cy + dy, side_) for cx, cy, side_ in boxes)
                return Clip(dataclasses.replace(scene, boxes=tuple(new)),
                            Event("move", i, direction=direction, shift=shift, to=to), frames)
    return None


def _other_colour(rng: np.random.Generator, scene: Scene, i: int, avoid: set[str]) -> str:
    """A colour for group i that keeps (colour, shape) distinct across groups."""
    g = scene.groups[i]
    taken = {(h.colour, h.shape) for k, h in enumerate(scene.groups) if k != i}
    options = [c for c in COLOURS if c not in avoid and (c, g.shape) not in taken]
    return str(options[int(rng.integers(len(options)))])


def _at(rng: np.random.Generator, frames: int) -> int:
    return int(rng.integers(frames // 4 + 1, frames - frames // 4))  # [F//4 + 1, F - F//4 - 1]


def sample_clip(rng: np.random.Generator, size: int, frames: int = DEFAULT_FRAMES) -> Clip:
    if frames < 4:
        raise ValueError(f"a clip needs >= 4 frames to show a before and an after, got {frames}")
    scene = sample_scene(rng, size)
    kinds = list(EVENT_KINDS)
    kind = kinds[int(rng.choice(len(kinds), p=np.array(list(EVENT_KINDS.values()))))]
    i = int(rng.integers(len(scene.groups)))
    if kind == "move":
        for k in (i, 1 - i)[:len(scene.groups)]:  # the other group when this one has no room
            clip = _try_move(rng, scene, k, frames)
            if clip is not None:
                return clip
        kind = "turn"  # no room to move (e.g. three large objects filling a half)
    if kind == "appear":
        return Clip(scene, Event("appear", i, at=_at(rng, frames)), frames)
    colour = _other_colour(rng, scene, i, {scene.groups[i].colour})
    return Clip(scene, Event("turn", i, colour=colour, at=_at(rng, frames)), frames)


def sibling_of(rng: np.random.Generator, clip: Clip) -> Clip:
    """The hard negative: the same clip but one thing (see the module docstring)."""
    e, s = clip.event, clip.scene
    if e.kind == "move":  # played backwards: starts where `clip` ends, moves the other way
        end = frame_scene(clip, clip.frames - 1)
        return Clip(end, dataclasses.replace(e, direction=OPPOSITE_DIRECTION[e.direction], to=s.boxes[e.group]),
                    clip.frames)
    if e.kind == "turn":
        return Clip(s, dataclasses.replace(e, colour=_other_colour(rng, s, e.group, {clip.actor.colour, e.colour})),
                    clip.frames)
    groups = list(s.groups)  # appear: the group that appears has another colour
    groups[e.group] = dataclasses.replace(groups[e.group], colour=_other_colour(rng, s, e.group, {clip.actor.colour}))
    return Clip(dataclasses.replace(s, groups=tuple(groups)), e, clip.frames)


def clip_pair(seed: int, pool: int, split: str, index: int, size: int, frames: int = DEFAULT_FRAMES
              ) -> tuple[np.random.Generator, Clip, Clip]:
    """Unit `index` of a clip pool's split: its own rng (for the texts that follow) and two siblings."""
    if pool not in (POOL_CLIP_PRETRAIN, POOL_CLIP_DOWNSTREAM):
        raise ValueError(f"clip pools are {POOL_CLIP_PRETRAIN} and {POOL_CLIP_DOWNSTREAM}, got {pool}")
    rng = np.random.default_rng([seed, pool, SPLITS.index(split), index])
    clip = sample_clip(rng, size, frames)
    return rng, clip, sibling_of(rng, clip)


def regions_kept(clip: Clip) -> bool:
    """Every object of every frame inside its group's region (so inside the frame, and apart
    from the other group). Checked by the tests on many clips."""
    for s in frame_scenes(clip):
        for g, boxes in zip(s.groups, s.boxes):
            x0, y0, x1, y1 = _RECT[g.region]
            if any(cx - side / 2 < x0 - 1e-9 or cx + side / 2 > x1 + 1e-9 or cy - side / 2 < y0 - 1e-9
                   or cy + side / 2 > y1 + 1e-9 for cx, cy, side in boxes):
                return False
    return True

