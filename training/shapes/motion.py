"""The language of clips: what a text claims about a clip's event, whether it is true, and
how the world phrases it (the clip side of `training.shapes.language`).

A clip text is generated from a `ClipDescription`: a static `Description` that must hold on
EVERY frame (`holds` of the image world), plus `Change` claims about the event. So the truth
of any clip text on any clip is decidable (`clip_holds`), and QA answers are computed from
the clip (`clip_answer`), never copied from the generator.

Who a change claim is about: `Change.who` is a `Mention` matched on frame 0 for move, turn
and still (a turning group is named by its start colour), on the last frame for appear (the
group is not there before). A move/appear/turn claim is true when the mention picks exactly
the event's group (and its count, when given) and the event is of that kind (direction or new
colour, when given, equal).

Two registers, as for images:
- `clip_alt_text`: pretraining, varied and partial ("a red circle moving to the left",
  "red circle goes left", "a blue square appears", "the star turns green", "something moving").
- `canonical_clip_captions` / `clip_questions`: the downstream formats ("one red circle moves
  left"; "which way does the red circle move ?" -> "left").
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from training.shapes.clips import DIRECTIONS, Clip, frame_scene, frame_scenes
from training.shapes.language import COUNT_WORDS, SIDE_WORDS, Description, Mention, _phrase, _pick, holds, matching
from training.shapes.render import COLOURS, SHAPES, Group

# alt-text phrasings; every word here is in `motion_words()`
ALT_DIRECTIONS = {"left": ["left", "to the left", "leftwards"], "right": ["right", "to the right", "rightwards"],
                  "up": ["up", "upwards", "towards the top"], "down": ["down", "downwards", "towards the bottom"]}
MOVE_VERBS = [("moving", "moving"), ("moves", "move"), ("goes", "go"), ("going", "going"), ("slides", "slide"),
              ("sliding", "sliding"), ("drifting", "drifting"), ("heads", "head")]  # (singular, plural)
APPEAR_VERBS = [("appears", "appear"), ("appearing", "appearing"), ("shows up", "show up"), ("pops up", "pop up")]
TURN_VERBS = [("turns", "turn"), ("turning", "turning"), ("becomes", "become"), ("changing to", "changing to"),
              ("changes colour to", "change colour to")]
LEADS = ["", "", "", "video of ", "clip: ", "a clip of ", "then "]


@dataclasses.dataclass(frozen=True)
class Change:
    who: Mention
    kind: str  # "move" | "appear" | "turn" | "still" (the picked groups do not move)
    direction: str | None = None  # move: None = any direction
    colour: str | None = None  # turn: the new colour, None = any


@dataclasses.dataclass(frozen=True)
class ClipDescription:
    static: Description  # true of every frame
    changes: tuple[Change, ...] = ()


def _picked(c: Change, clip: Clip) -> list[Group] | None:
    """The groups `c.who` picks at its frame (module docstring), None if its count is wrong.
    Either frame lists groups as `clip.scene` does: a turn changes colour only after frame 0,
    an appearing group is in the last frame as in `clip.scene`."""
    picked = matching(c.who, frame_scene(clip, clip.frames - 1 if c.kind == "appear" else 0))
    if c.who.count is not None and sum(g.count for g in picked) != c.who.count:
        return None
    return picked


def change_holds(c: Change, clip: Clip) -> bool:
    picked = _picked(c, clip)
    if not picked:
        return False
    e, actor = clip.event, clip.actor
    if c.kind == "still":
        return not (e.kind == "move" and actor in picked)
    if picked != [actor] or e.kind != c.kind:
        return False
    if c.kind == "move":
        return c.direction in (None, e.direction)
    if c.kind == "turn":
        return c.colour in (None, e.colour)
    return c.kind == "appear"


def clip_holds(d: ClipDescription, clip: Clip) -> bool:
    """Is every claim of `d` true of `clip`: the static part on every frame, each change?"""
    return all(holds(d.static, s) for s in frame_scenes(clip)) and all(change_holds(c, clip) for c in d.changes)


# ---------------------------------------------------------------- canonical (downstream) register


def _noun(g: Group) -> str:
    return f"{COUNT_WORDS[g.count]} {g.colour} {g.shape}{'s' if g.count > 1 else ''}"


def canonical_clip_captions(clip: Clip) -> list[str]:
    """One fixed style: 'one red circle moves left', 'two blue squares appear', 'one red star turns green'."""
    g, e = clip.actor, clip.event
    one = g.count == 1
    verb = {"move": f"{'moves' if one else 'move'} {e.direction}", "appear": "appears" if one else "appear",
            "turn": f"{'turns' if one else 'turn'} {e.colour}"}[e.kind]
    return [f"{_noun(g)} {verb}"]


def canonical_description(clip: Clip) -> ClipDescription:
    """What `canonical_clip_captions` claims."""
    g, e = clip.actor, clip.event
    return ClipDescription(Description(()), (Change(Mention(g.count, g.colour, g.shape), e.kind, e.direction,
                                                    e.colour),))


_NP = r"(one|two|three) (" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")s?"
_CANONICAL = re.compile(rf"^{_NP} (moves? ({'|'.join(DIRECTIONS)})|appears?|turns? ({'|'.join(COLOURS)}))$")


def is_canonical_clip(text: str) -> bool:
    return bool(_CANONICAL.match(text))


def _the(g: Group, with_colour: bool = True) -> str:
    noun = f"{g.shape}{'s' if g.count > 1 else ''}"
    return f"the {g.colour} {noun}" if with_colour else f"the {noun}"


def clip_answer(kind: str, who: Mention, clip: Clip) -> str | None:
    """The answer a QA query (kind, who) has on `clip`, None when it does not apply there.
    direction: "which way does X move ?"; turn_colour: "what colour does X turn ?";
    moves: "does X move ?" (yes/no); appear_colour: "what colour is the X that appears ?"."""
    e, actor = clip.event, clip.actor
    picked = _picked(Change(who, "appear" if kind == "appear_colour" else "move"), clip)
    if not picked:
        return None
    if kind == "appear_colour":  # of the picked groups, the one absent at frame 0
        return actor.colour if e.kind == "appear" and actor in picked else None
    if kind == "moves":
        return "yes" if e.kind == "move" and actor in picked else "no"
    if picked != [actor]:
        return None
    wanted = {"direction": ("move", e.direction), "turn_colour": ("turn", e.colour)}
    event_kind, answer = wanted[kind]
    return answer if e.kind == event_kind else None


def clip_questions(rng: np.random.Generator, clip: Clip) -> list[tuple[str, str, str, tuple[str, Mention]]]:
    """(type, question, answer, query): answerable only by watching the clip; `query` is what
    `clip_answer` takes, so a question's answer can be checked on any clip."""
    e, g = clip.event, clip.actor
    do = "does" if g.count == 1 else "do"
    out = []
    if e.kind == "move":
        out.append(("direction", f"which way {do} {_the(g)} move ?", Mention(None, g.colour, g.shape)))
    elif e.kind == "turn":
        unique_shape = sum(h.shape == g.shape for h in clip.scene.groups) == 1
        out.append(("turn_colour", f"what colour {do} {_the(g, not unique_shape)} turn ?",
                    Mention(None, None if unique_shape else g.colour, g.shape)))
    else:
        be = "is" if g.count == 1 else "are"
        verb = "appears" if g.count == 1 else "appear"
        out.append(("appear_colour", f"what colour {be} {_the(g, False)} that {verb} ?", Mention(None, None, g.shape)))
    # yes/no "does X move ?": mostly the mover in a move clip, any group there from frame 0 otherwise
    # (about 40% "yes"; asking a random group would make "no" right 3 times in 4)
    groups = clip.scene.groups
    if e.kind == "move":
        asked = g if len(groups) == 1 or rng.random() < 0.75 else groups[1 - e.group]
    else:
        present = [h for h in groups if not (e.kind == "appear" and h == g)]
        asked = present[int(rng.integers(len(present)))] if present else None
    if asked is not None:
        out.append(("moves", f"{'does' if asked.count == 1 else 'do'} {_the(asked)} move ?",
                    Mention(None, asked.colour, asked.shape)))
    return [(kind, q, clip_answer(kind, who, clip), (kind, who)) for kind, q, who in out]


# ---------------------------------------------------------------- alt-text (pretraining) register


def _actor_mention(rng: np.random.Generator, clip: Clip, frame_index: int, kind: str) -> Mention:
    """A full or partial mention of the actor, counted on the frame it is matched on."""
    g = clip.actor
    size = g.size if rng.random() < 0.25 else None
    r = rng.random()
    m = Mention(None, g.colour, g.shape, size) if r < 0.6 else (
        Mention(None, None, g.shape, size) if r < 0.85 else Mention(None, g.colour, None, size))
    if kind == "turn" and rng.random() < 0.5:
        m = dataclasses.replace(m, colour=None, shape=g.shape)  # "the star turns green"
    total = sum(h.count for h in matching(m, frame_scene(clip, frame_index)))
    return dataclasses.replace(m, count=total if rng.random() < 0.6 else None)


def _np(rng: np.random.Generator, m: Mention) -> tuple[str, Mention]:
    """A noun phrase for `m`, and what it claims (a vaguer "something" claims less)."""
    if m.count == 1 and rng.random() < 0.4:  # "the red circle": _phrase never says "the"
        words = [w for w in (m.size, m.colour) if w] + [m.shape or _pick(rng, ["shape", "object"])]
        return "the " + " ".join(words), m
    if m.count is None and rng.random() < 0.3:  # "something (red) moves left"
        return "something" + (f" {m.colour}" if m.colour else ""), Mention(colour=m.colour)
    return _phrase(rng, m), m


def _event_text(rng: np.random.Generator, clip: Clip) -> tuple[str, Change]:
    e = clip.event
    m = _actor_mention(rng, clip, clip.frames - 1 if e.kind == "appear" else 0, e.kind)
    np_, m = _np(rng, m)
    one = m.count == 1 or np_.startswith("something")
    verbs = {"move": MOVE_VERBS, "appear": APPEAR_VERBS, "turn": TURN_VERBS}[e.kind]
    verb = _pick(rng, verbs)[0 if one else 1]
    if e.kind == "move":
        if rng.random() < 0.15:  # partial: no direction
            return f"{np_} {verb}", Change(m, "move")
        return f"{np_} {verb} {_pick(rng, ALT_DIRECTIONS[e.direction])}", Change(m, "move", e.direction)
    if e.kind == "turn":
        if rng.random() < 0.1:
            return f"{np_} {'changes' if one else 'change'} colour", Change(m, "turn")
        return f"{np_} {verb} {e.colour}", Change(m, "turn", colour=e.colour)
    return f"{np_} {verb}", Change(m, "appear")


def _context(rng: np.random.Generator, clip: Clip) -> tuple[str, Mention] | None:
    """The other, static group as a phrase true on every frame ('one blue square at the bottom')."""
    if len(clip.scene.groups) == 1:
        return None
    g = clip.scene.groups[1 - clip.event.group]
    m = Mention(g.count, g.colour, g.shape)
    if rng.random() < 0.5:
        m = dataclasses.replace(m, region=g.region)
        return f"{_phrase(rng, m)} {SIDE_WORDS[g.region]}", m
    return _phrase(rng, m), m


def _clip_alt_text_once(rng: np.random.Generator, clip: Clip) -> tuple[str, ClipDescription]:
    text, change = _event_text(rng, clip)
    statics: tuple[Mention, ...] = ()
    context = _context(rng, clip) if rng.random() < 0.35 else None
    if context is not None:
        text = _pick(rng, [f"{text}, {context[0]}", f"{context[0]} and {text}", f"{text} next to {context[0]}"])
        statics = (context[1],)
    elif rng.random() < 0.1:  # "...; the blue square stays still"
        g = clip.scene.groups[int(rng.integers(len(clip.scene.groups)))]
        if clip.event.kind == "turn" or g != clip.actor:
            still = Change(Mention(None, g.colour, g.shape), "still")
            text = f"{text}; {_the(g)} {'stays' if g.count == 1 else 'stay'} still"
            return _pick(rng, LEADS) + text, ClipDescription(Description(()), (change, still))
    return _pick(rng, LEADS) + text, ClipDescription(Description(statics), (change,))


def clip_alt_text(rng: np.random.Generator, clip: Clip, contrast: Clip | None = None,
                  contrast_share: float = 0.0) -> tuple[str, ClipDescription]:
    """One pretraining text of `clip` and what it claims: true of every frame, never canonical.
    With `contrast` (the sibling), a `contrast_share` of texts are drawn to be false of it."""
    want = contrast is not None and rng.random() < contrast_share
    for attempt in range(60):
        text, d = _clip_alt_text_once(rng, clip)
        if not clip_holds(d, clip) or is_canonical_clip(text):
            continue
        if want and attempt < 40 and clip_holds(d, contrast):
            continue
        return text, d
    raise RuntimeError("no clip alt text found")


def motion_words() -> str:
    """Every word a clip text can add to the image world's vocabulary."""
    words = [w for ws in ALT_DIRECTIONS.values() for p in ws for w in p.split()] + list(DIRECTIONS)
    words += [w for verbs in (MOVE_VERBS, APPEAR_VERBS, TURN_VERBS) for pair in verbs for p in pair for w in p.split()]
    words += [w for lead in LEADS for w in lead.split()]
    words += "move moves appear appears turn turns which way does do that stays stay still something change colour " \
             "changes the".split()
    return " ".join(dict.fromkeys(words))

