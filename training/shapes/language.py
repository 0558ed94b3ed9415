"""The shapes world's language: what a text claims about a scene, whether it is true, and
how the world phrases it.

A text is generated from a `Description` (mentions of objects plus an optional relation),
so its truth on ANY scene is decidable (`holds`). That is what makes pretraining
negatives trustworthy: two paraphrased or partial captions of different images are
both positives of an image when both are true of it.

Two registers, on purpose disjoint:
- `alt_text`: the pretraining corpus, web-like and varied. Full and partial
  descriptions, counts as words or digits, sizes, sides, relations in several word
  orders, tag lists and yes/no checklists. It never produces a canonical caption.
- `canonical_captions` / `questions`: the downstream formats adapters learn (count words,
  "left of"; short-answer questions). New formats, same words.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from training.shapes.render import COLOURS, OPPOSITE, SHAPES, SIZES, Group, Scene

PROMPT = "a picture of "  # BLIP's caption prompt; the decoder continues it
COUNT_WORDS = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}  # up to 2 groups x 3
RELATION_WORDS = {"left": "left of", "right": "right of", "top": "above", "bottom": "below"}  # canonical
SIDE_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
WHERE_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}  # VQA answers
# alt-text relation phrases, "{a} PHRASE {b}" with a on the given side of b; the canonical
# ones among them only ever come with other determiners or words (alt_text rejects canonical forms)
ALT_RELATIONS = {
    "left": ["to the left of", "on the left of", "left of"],
    "right": ["to the right of", "on the right of", "right of"],
    "top": ["above", "over", "on top of"],
    "bottom": ["below", "under", "beneath"],
}


# head words of every side or relation phrase above; `spatial_cut` finds a phrase by its head
SPATIAL_HEADS = frozenset({"left", "right", "top", "bottom", "above", "over", "below", "under", "beneath"})
_PHRASE_LEAD = frozenset({"to", "on", "at", "the"})  # "to the left of", "at the top": the phrase starts here


def spatial_cut(text: str) -> int | None:
    """Word index where the first side or relation phrase after the text's first two words
    starts, or None: cut there, the prefix names an object ("a red circle") and whoever
    continues the text must say where it is ("to the left of ..."), which is what "where is
    the red circle ?" asks of BLIP's VQA path."""
    words = [w.strip(",:;") for w in text.split()]
    for i, w in enumerate(words):
        if w in SPATIAL_HEADS:
            while i > 0 and words[i - 1] in _PHRASE_LEAD:
                i -= 1
            if i >= 2:
                return i
    return None


@dataclasses.dataclass(frozen=True)
class Mention:
    """Objects picked by the given attributes (None = any). `count`: exact number of
    such objects in the scene (0 = none), None = at least one. `region`: every picked
    group lies on that side."""

    count: int | None = None
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    region: str | None = None


@dataclasses.dataclass(frozen=True)
class Description:
    mentions: tuple[Mention, ...]
    relation: str | None = None  # side of mentions[0]'s groups relative to mentions[1]'s


def matching(m: Mention, scene: Scene) -> list[Group]:
    return [g for g in scene.groups if m.colour in (None, g.colour) and m.shape in (None, g.shape)
            and m.size in (None, g.size)]


def holds(d: Description, scene: Scene) -> bool:
    """Is every claim of `d` true of `scene`?"""
    for m in d.mentions:
        gs = matching(m, scene)
        total = sum(g.count for g in gs)
        if (m.count is None and total == 0) or (m.count is not None and total != m.count):
            return False
        if m.region is not None and any(g.region != m.region for g in gs):
            return False
    if d.relation is not None:
        a, b = (matching(m, scene) for m in d.mentions[:2])
        if not a or not b or any(g.region != d.relation for g in a) or any(g.region != OPPOSITE[d.relation] for g in b):
            return False
    return True


# ---------------------------------------------------------------- canonical (downstream) register


def _noun(g: Group) -> str:
    return f"{COUNT_WORDS[g.count]} {g.colour} {g.shape}{'s' if g.count > 1 else ''}"


def canonical_captions(scene: Scene) -> list[str]:
    """'two red circles left of one blue square'; with two groups, both orders of mention."""
    if len(scene.groups) == 1:
        return [_noun(scene.groups[0])]
    a, b = scene.groups
    return [f"{_noun(x)} {RELATION_WORDS[x.region]} {_noun(y)}" for x, y in ((a, b), (b, a))]


_NP = r"(one|two|three) (" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")s?"
_CANONICAL = re.compile(rf"^{_NP}( (left of|right of|above|below) {_NP})?$")


def is_canonical(text: str) -> bool:
    return bool(_CANONICAL.match(text))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _bare(g: Group) -> str:
    return f"{g.colour} {g.shape}{'s' if g.count > 1 else ''}"


def questions(rng: np.random.Generator, scene: Scene) -> list[tuple[str, str, str | int]]:
    """(type, question, answer): colour, shape, where, count, exists, relation; every
    question is answerable from the image alone."""
    gs = scene.groups
    qa: list[tuple[str, str, str | int]] = []
    for g in gs:
        be, s = ("are", "s") if g.count > 1 else ("is", "")
        if sum(h.shape == g.shape for h in gs) == 1:
            qa.append(("colour", f"what colour {be} the {g.shape}{s} ?", g.colour))
        if sum(h.colour == g.colour for h in gs) == 1:
            qa.append(("shape", f"what shape {be} the {g.colour} object{s} ?", g.shape))
        if len(gs) == 2:
            qa.append(("where", f"where {be} the {g.colour} {g.shape}{s} ?", WHERE_WORDS[g.region]))
    shape = str(rng.choice([h.shape for h in gs] if rng.random() < 0.75 else list(SHAPES)))
    qa.append(("count", f"how many {shape}s are there ?", sum(h.count for h in gs if h.shape == shape)))
    present = {(h.colour, h.shape) for h in gs}
    colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
    if rng.random() < 0.5:  # balance yes/no
        g = gs[int(rng.integers(len(gs)))]
        colour, shape = g.colour, g.shape
    qa.append(("exists", f"is there {_article(colour)} {colour} {shape} ?",
               "yes" if (colour, shape) in present else "no"))
    if len(gs) == 2:
        a, b = gs if rng.random() < 0.5 else gs[::-1]
        rel = a.region if rng.random() < 0.5 else str(rng.choice([r for r in RELATION_WORDS if r != a.region]))
        be = "are" if a.count > 1 else "is"
        qa.append(("relation", f"{be} the {_bare(a)} {RELATION_WORDS[rel]} the {_bare(b)} ?",
                   "yes" if rel == a.region else "no"))
    return qa


# ---------------------------------------------------------------- alt-text (pretraining) register


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _phrase(rng: np.random.Generator, m: Mention) -> str:
    """A noun phrase for `m`: determiner or number, optional size, colour, noun."""
    noun = m.shape or _pick(rng, ["shape", "object"])
    plural = m.count is None or m.count != 1
    words = [w for w in (m.size, m.colour) if w]
    if m.count is None:
        det = _pick(rng, ["", "some"])
    elif m.count == 0:
        det = "no"
    elif m.count == 1:
        det = _pick(rng, [_article((words or [noun])[0]), _article((words or [noun])[0]), "one", "1", "a single"])
    else:
        det = _pick(rng, [COUNT_WORDS[m.count], COUNT_WORDS[m.count], str(m.count)])
    return " ".join(w for w in [det, *words, noun + ("s" if plural else "")] if w)


def _be(m: Mention) -> str:
    return "is" if m.count == 1 else "are"


def _mention_of(rng: np.random.Generator, g: Group, scene: Scene, *, full: bool) -> Mention:
    """A mention picking exactly group g (or, partial, a superset sharing its colour or shape)."""
    size = g.size if rng.random() < 0.35 else None
    if full or rng.random() < 0.5:
        m = Mention(None, g.colour, g.shape, size)
    else:
        m = _pick(rng, [Mention(None, g.colour, None, size), Mention(None, None, g.shape, size)])
    total = sum(h.count for h in matching(m, scene))
    return dataclasses.replace(m, count=total if rng.random() < 0.9 else None)


def _one_group(rng, scene: Scene, g: Group) -> tuple[str, Description]:
    m = _mention_of(rng, g, scene, full=len(scene.groups) == 1)
    np_ = _phrase(rng, m)
    templates = [np_, np_, f"image of {np_}", f"photo of {np_}", f"{np_} on a plain background",
                 f"there {_be(m)} {np_}", f"{np_} in the picture", f"drawing: {np_}"]
    if g.region in SIDE_WORDS and len(matching(m, scene)) == 1 and rng.random() < 0.75:
        side = SIDE_WORDS[g.region]
        m = dataclasses.replace(m, region=g.region)
        templates = [f"{np_} {side}", f"{side}, {np_}", f"{side}: {np_}", f"{np_} {_be(m)} {side}"]
    return _pick(rng, templates), Description((m,))


def _two_groups(rng, scene: Scene) -> tuple[str, Description]:
    a, b = scene.groups if rng.random() < 0.5 else scene.groups[::-1]
    ma, mb = (_mention_of(rng, g, scene, full=rng.random() < 0.7) for g in (a, b))
    if matching(ma, scene) == matching(mb, scene):  # "two purple objects and two purple objects"
        ma, mb = (_mention_of(rng, g, scene, full=True) for g in (a, b))
    pa, pb = _phrase(rng, ma), _phrase(rng, mb)
    clean = len(matching(ma, scene)) == 1 and len(matching(mb, scene)) == 1 and ma.count and mb.count
    if not clean or rng.random() < 0.08:  # no spatial claim
        text = _pick(rng, [f"{pa} and {pb}", f"{pa} with {pb}", f"{pa}, {pb}", f"{pa} next to {pb}"])
        return text, Description((ma, mb))
    ra = a.region
    phrase = _pick(rng, ALT_RELATIONS[ra])
    sa, sb = SIDE_WORDS[ra], SIDE_WORDS[OPPOSITE[ra]]
    text = _pick(rng, [
        f"{pa} {phrase} {pb}", f"{pa} {_be(ma)} {phrase} {pb}", f"{pa} {_be(ma)} {phrase} {pb}",
        f"{pa} {sa} and {pb} {sb}", f"{sa} {pa}, {sb} {pb}", f"{sa}: {pa}; {sb}: {pb}",
        f"{pb} {sb}, {pa} {sa}", f"{pa} {sa}, {pb} {sb}",
    ])
    return text, Description((ma, mb), relation=ra)


def _tags(rng, scene: Scene) -> tuple[str, Description]:
    words, mentions = [], []
    for g in scene.groups:
        plural = "s" if g.count > 1 else ""
        form = int(rng.integers(4))
        words += [[g.colour, g.shape], [f"{g.colour} {g.shape}"], [g.size, g.colour, g.shape],
                  [f"{g.count} {g.shape}{plural}"]][form]
        mentions += [[Mention(colour=g.colour), Mention(shape=g.shape)], [Mention(None, g.colour, g.shape)],
                     [Mention(size=g.size), Mention(colour=g.colour), Mention(shape=g.shape)],
                     [Mention(sum(h.count for h in scene.groups if h.shape == g.shape), shape=g.shape)]][form]
    order = rng.permutation(len(words))
    return _pick(rng, ["tags: ", "", "keywords: "]) + ", ".join(words[i] for i in order), Description(tuple(mentions))


def _checklist(rng, scene: Scene) -> tuple[str, Description]:
    """'red circles: yes, stars: no' / 'squares: 2': yes/no and digit answers in the wild."""
    items: dict[str, Mention] = {}
    for _ in range(int(rng.integers(1, 4))):
        shape, colour = _pick(rng, list(SHAPES)), _pick(rng, list(COLOURS))
        if rng.random() < 0.5:
            m = Mention(None, colour if rng.random() < 0.5 else None, shape)
            name = " ".join(w for w in (m.colour, shape + "s") if w)
            present = holds(Description((m,)), scene)
            items[f"{name}: {'yes' if present else 'no'}"] = m if present else dataclasses.replace(m, count=0)
        else:
            n = sum(g.count for g in scene.groups if g.shape == shape)
            items[f"{shape}s: {n}"] = Mention(n, shape=shape)
    return ", ".join(items), Description(tuple(items.values()))


def alt_text(rng: np.random.Generator, scene: Scene, contrast: Scene | None = None,
             contrast_share: float = 0.0) -> tuple[str, Description]:
    """One pretraining caption of `scene` and what it claims: true of the scene, never
    in the canonical form. With `contrast` (the sibling), a `contrast_share` of captions
    are also false of it, so the pair is a hard negative only grounding can tell apart
    (a relation sibling needs a spatial claim; few captions make one by chance)."""
    # share 0 draws nothing: the stream is then exactly backbone v2's first stage's
    want = contrast is not None and contrast_share > 0 and rng.random() < contrast_share
    for attempt in range(60):
        text, d = _alt_text_once(rng, scene)
        if want and attempt < 40 and holds(d, contrast):
            continue
        return text, d
    raise RuntimeError("no alt text found")


def _alt_text_once(rng: np.random.Generator, scene: Scene) -> tuple[str, Description]:
    for _ in range(20):
        r = rng.random()
        if r < 0.08:
            text, d = _tags(rng, scene)
        elif r < 0.16:
            text, d = _checklist(rng, scene)
        elif len(scene.groups) == 2 and r < 0.8:
            text, d = _two_groups(rng, scene)
        else:
            text, d = _one_group(rng, scene, _pick(rng, list(scene.groups)))
        assert holds(d, scene), (text, d, scene.groups)
        if not is_canonical(text):
            return text, d
    raise RuntimeError("no alt text found")  # unreachable in practice: most templates are never canonical


def vocabulary_texts(motion: bool = True) -> list[str]:
    """Every word any generated text can contain, whatever the seed or size; with `motion`,
    the words of clips too (training.shapes.motion). A world without clips lists its
    vocabulary with motion=False (its texts.json is as before clips existed)."""
    words = list(COLOURS) + list(SHAPES) + [s + "s" for s in SHAPES] + list(COUNT_WORDS.values()) + list(SIZES)
    words += [str(n) for n in COUNT_WORDS] + list(RELATION_WORDS.values()) + list(SIDE_WORDS.values())
    words += [p for ps in ALT_RELATIONS.values() for p in ps] + list(WHERE_WORDS.values())
    words += ("a an and what colour shape is are the object objects shape shapes where how many there ? yes no "
              "some single image of photo on plain background in picture drawing with next to tags keywords "
              ": ; , ").split()
    texts = [PROMPT.strip(), " ".join(words)]
    if motion:
        from training.shapes.motion import motion_words  # motion builds on this module
        texts.append(motion_words())
    return texts
