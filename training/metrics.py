"""Standard metrics as pure functions: caption BLEU@4 / CIDEr, VQAv2 accuracy, R@K.

- Caption: pycocoevalcap's `Bleu(4)` and `Cider` scorers on lowercased,
  whitespace-tokenized text (its PTB tokenizer needs Java; none here), both x100 as
  papers print them (BLEU@4 0-100; CIDEr 0-1000, a perfect corpus ~300-1000).
- VQA: the official VQAv2 evaluation (vqaEval.py): answers normalised (punctuation,
  number words -> digits, articles dropped, contractions restored); a prediction's
  accuracy is min(#matching annotators / 3, 1), averaged over the 10 leave-one-out
  subsets of the 10 annotations, as the official script does. One difference: the
  official script normalises only when the annotators disagree; we always do, so
  "two" vs "2" never depends on the other annotations.
- Retrieval: R@1/5/10 from a score matrix, in percent, both directions.
"""

from __future__ import annotations

import re

import numpy as np

# -- caption ------------------------------------------------------------------------


def _caption_tokens(text: str) -> str:
    return " ".join(text.lower().split())


def caption_scores(references: dict[str, list[str]], hypotheses: dict[str, str]) -> dict[str, float]:
    """references {key: [ref, ...]}, hypotheses {key: hyp} -> {"bleu4", "cider"}, both x100.

    The scorers' own scales (BLEU 0-1, CIDEr 0-10) appear nowhere else: every caller
    prints and logs these values as they are."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if set(references) != set(hypotheses):
        raise ValueError("references and hypotheses must have the same keys")
    gts = {k: [_caption_tokens(r) for r in refs] for k, refs in references.items()}
    res = {k: [_caption_tokens(h) or "<empty>"] for k, h in hypotheses.items()}  # Bleu asserts non-empty lists
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu4": 100.0 * float(bleu[3]), "cider": 100.0 * float(cider)}


# -- VQA (after the official VQA API's vqaEval.py) -------------------------------------------
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def normalize_answer(answer: str) -> str:
    """"Two." -> "2", "the dog's" -> "dog's", "isnt" -> "isn't", "yes!" -> "yes"."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 accuracy of one prediction against its human answers (usually 10)."""
    if not answers:
        raise ValueError("a VQA question needs at least one reference answer")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    accs = []
    for k in range(len(gts)):
        others = gts[:k] + gts[k + 1:]
        accs.append(min(1.0, sum(a == pred for a in others) / 3.0))
    return sum(accs) / len(accs) if len(gts) > 1 else float(gts[0] == pred)


# -- retrieval --------------------------------------------------------------------


def _ranks(scores: np.ndarray, truth: list[list[int]]) -> np.ndarray:
    """Per query row, the best (lowest) 0-based rank of any of its true columns."""
    order = np.argsort(-scores, axis=1, kind="stable")  # (Q, C) columns by descending score
    ranks = np.empty(len(scores), dtype=np.int64)
    for q, cols in enumerate(truth):
        if not cols:
            raise ValueError(f"query {q} has no ground-truth item")
        ranks[q] = np.where(np.isin(order[q], cols))[0].min()
    return ranks


def recall_at_k(scores_i2t: np.ndarray, scores_t2i: np.ndarray, img2txt: list[list[int]], txt2img: list[int],
                ks=(1, 5, 10)) -> dict[str, float]:
    """scores_i2t (n_img, n_txt), scores_t2i (n_txt, n_img) -> {"i2t_r1", ..., "t2i_r10", "r_mean"} in %."""
    r_i2t = _ranks(np.asarray(scores_i2t), img2txt)
    r_t2i = _ranks(np.asarray(scores_t2i), [[i] for i in txt2img])
    out = {}
    for name, ranks in (("i2t", r_i2t), ("t2i", r_t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = float(100.0 * (ranks < k).mean())
    out["r_mean"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks]))
    return out
