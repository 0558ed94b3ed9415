"""Predictions as a user gets them, defined once: the server's engine and
`training.evaluate` both call these, so a number measured offline is the number served.

    ids = predict.question_ids(bb, ["is there a star ?", "what colour is the circle ?"], max_length=40)
    predict.answers(bb, pixel_values, ids, routing=routing)            # ["yes", "red"]
    predict.answers(bb, pixel_values, ids, num_beams=1, max_new_tokens=4)
    predict.rank_answers(bb, pixel_values, ids, [["yes", "no"], ["red", "blue"]])  # [(2,), (2,)] log-likelihoods
    predict.captions(bb, pixel_values)                                 # greedy, at most 30 tokens
    predict.rerank_score(itm_logits, itc)                              # retrieval: BLIP's re-rank score

What is defined here and nowhere else:
- decoding defaults per task (`CAPTION`, `VQA`); VQA follows BLIP's inference in LAVIS
  (beam 3, at most 10 answer tokens, at least 1);
- question batching: each question is tokenized alone (no padding), a batch pads them
  to its longest and masks the padding, so a question of any length shares a call with
  any other and gets the answer it gets alone (the decoder never sees the padding);
- answer decoding, and why an answer is never "": special tokens other than [SEP] are
  suppressed while generating and at least one token is generated, so every answer
  holds at least one word piece;
- the retrieval score of a re-ranked candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adapters.backbone import tasks


@dataclass(frozen=True)
class Decoding:
    num_beams: int
    max_new_tokens: int
    min_new_tokens: int


CAPTION = Decoding(num_beams=1, max_new_tokens=30, min_new_tokens=0)
# LAVIS BlipVQA.predict_answers: num_beams=3, max_len=10, min_len=1 (answers are short; the
# minimum keeps [SEP] from ending an answer before its first word)
VQA = Decoding(num_beams=3, max_new_tokens=10, min_new_tokens=1)
DEFAULTS = {"caption": CAPTION, "vqa": VQA}


def decoding(task: str, num_beams: int | None = None, max_new_tokens: int | None = None) -> Decoding:
    """The task's defaults with the given options in their place (None = default)."""
    base = DEFAULTS[task]
    d = Decoding(base.num_beams if num_beams is None else num_beams,
                 base.max_new_tokens if max_new_tokens is None else max_new_tokens, base.min_new_tokens)
    if d.num_beams < 1 or d.max_new_tokens < 1:
        raise ValueError(f"num_beams and max_new_tokens must be >= 1, got {d.num_beams}, {d.max_new_tokens}")
    return d


# -- captions -------------------------------------------------------------------------------
def captions(bb, pixel_values: torch.Tensor, *, num_beams: int | None = None, max_new_tokens: int | None = None,
             routing=None) -> list[str]:
    """(B, 3, H, W) -> B captions (the prompt removed)."""
    d = decoding("caption", num_beams, max_new_tokens)
    return tasks.caption(bb, pixel_values, num_beams=d.num_beams, max_new_tokens=d.max_new_tokens,
                         min_new_tokens=d.min_new_tokens, routing=routing)


# -- questions ------------------------------------------------------------------------------
def question_ids(bb, questions: list[str], max_length: int) -> list[torch.Tensor]:
    """Each question tokenized alone: [CLS] ... [SEP] ids (L_i,), truncated to max_length."""
    return [tasks.tokens(bb, [q], max_length=max_length)[0][0] for q in questions]


def pad_questions(bb, ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Questions (L_i,) -> ids (B, L) right-padded with [PAD] to the longest, and mask (B, L)."""
    longest = max(len(q) for q in ids)
    out = torch.full((len(ids), longest), bb.config.text_config.pad_token_id, dtype=torch.long, device=bb.device)
    mask = torch.zeros((len(ids), longest), dtype=torch.long, device=bb.device)
    for i, q in enumerate(ids):
        out[i, : len(q)] = q
        mask[i, : len(q)] = 1
    return out, mask


def suppressed_ids(bb) -> list[int]:
    """Special tokens an answer may not contain: all but [SEP], which ends it."""
    sep = bb.config.text_config.sep_token_id
    return sorted(set(bb.processor.tokenizer.all_special_ids) - {sep})


def answers(bb, pixel_values: torch.Tensor, ids: list[torch.Tensor], *, num_beams: int | None = None,
            max_new_tokens: int | None = None, routing=None) -> list[str]:
    """B images (B, 3, H, W) and B questions of any lengths -> B answers, never "".
    Each row's answer equals the one it gets alone (masked padding), beam search included."""
    d = decoding("vqa", num_beams, max_new_tokens)
    input_ids, mask = pad_questions(bb, ids)
    out = tasks.vqa_ids(bb, pixel_values, input_ids, mask, num_beams=d.num_beams, max_new_tokens=d.max_new_tokens,
                        min_new_tokens=d.min_new_tokens, suppress_ids=suppressed_ids(bb), routing=routing)
    texts = [t.strip() for t in bb.processor.tokenizer.batch_decode(out, skip_special_tokens=True)]
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:  # every generated id is a non-special token, so only a vocabulary of blank tokens gets here
        raise RuntimeError(f"answers {empty} decoded to '' from ids {out[empty].tolist()}")
    return texts


def rank_answers(bb, pixel_values: torch.Tensor, ids: list[torch.Tensor], candidates: list[list[str]], *,
                 routing=None) -> list[torch.Tensor]:
    """Log-likelihood of each candidate answer per question (questions of any lengths): list of (C_i,)."""
    input_ids, mask = pad_questions(bb, ids)
    return tasks.vqa_rank(bb, pixel_values, input_ids, mask, candidates, routing=routing)


# -- retrieval ------------------------------------------------------------------------------
def rerank_score(itm_logits, itc):
    """BLIP's retrieval score of a candidate re-ranked by ITM (BLIP and LAVIS evaluation):
    ITM logit(match) + ITC cosine. itm_logits (..., 2), itc (...) -> (...); tensors or arrays."""
    return itm_logits[..., 1] + itc
