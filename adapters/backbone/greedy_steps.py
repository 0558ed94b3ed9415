"""Greedy caption decoding one token at a time over a batch whose rows come and go
(iteration-level, "continuous" batching). The server's scheduler (server/continuous.py)
drives it; the math is here, next to `from_image_tokens.captions`, whose tokens it
reproduces row for row.

    run = None                                           # no rows yet
    new = prefill(bb, image_embeds, routing=r_new)       # joiners: the prompt pass -> first token logits
    tok = choose(bb, new.logits, new.generated, min_new_tokens=0)
    run = merge(run, new.rows, tok)                      # into the running batch
    logits = step(bb, run, routing=r_all)                # (B, V): every running row advances one token
    run = run.select(keep)                               # finished rows leave

Layout. Rows joined at different steps have cached different numbers of tokens. The
self-attention cache is (B, nh, S, hs) with each row's real entries RIGHT-aligned and
zeros on the left; `mask` (B, S) marks the real ones. BLIP's text embeddings take the
position from the cache length, one number for the whole batch, so every forward here
hands `position_ids` explicitly: a row's next position is its own real length, exactly
what it gets in a batch of its own. Padded positions get the additive mask's minimum,
so their softmax weight is exactly 0 and they add exact zeros; what remains are float
summation-order differences, as between any two batch compositions today (argmax is
what must agree, and the tests check that token for token).

Only greedy search: beams reorder rows inside a request, which a row-wise cache does not
model; VQA (3 beams) and num_beams > 1 captions stay on `from_image_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from adapters.backbone import tasks
from adapters.runtime.routing import routed_if_given

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: (keys, values), each (B, nh, L, hs)


@dataclass
class Running:
    """The running batch's decoder state, one row per caption being written."""

    self_kv: KV  # per layer: (B, nh, S, hs), real entries right-aligned
    cross_kv: KV  # per layer: (B, nh, T, hs), the image tokens' keys/values (each row's own adapter)
    embeds: torch.Tensor  # (B, T, Hv) image tokens: marks the cross-attention (cached K/V are used)
    mask: torch.Tensor  # (B, S) long, 1 on real cache positions
    last: torch.Tensor  # (B,) the token each row feeds next (its latest generated one)
    cache: EncoderDecoderCache | None = None  # holds the tensors above while the rows stay; rebuilt after a change

    @property
    def size(self) -> int:
        return self.mask.shape[0]

    def select(self, keep: torch.Tensor) -> "Running | None":
        """Only rows `keep` (K,) stay; leading columns padded in every remaining row are cut."""
        if keep.numel() == 0:
            return None
        mask = self.mask[keep]
        cut = int((mask.sum(0) > 0).long().argmax())  # first column real in some row (rows are right-aligned)
        return Running([(k[keep, :, cut:], v[keep, :, cut:]) for k, v in self.self_kv],
                       [(k[keep], v[keep]) for k, v in self.cross_kv], self.embeds[keep], mask[:, cut:],
                       self.last[keep])


@dataclass
class Prefilled:
    rows: Running  # `last` not yet set (the first token is chosen from `logits`)
    logits: torch.Tensor  # (n, V) float32, the first generated token's


def _kv(cache: DynamicCache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _cache(run: Running) -> EncoderDecoderCache:
    # after rows joined or left: cross K/V given -> every layer's `is_updated`, so they are reused, not recomputed
    if run.cache is None:
        run.cache = EncoderDecoderCache(DynamicCache(run.self_kv), DynamicCache(run.cross_kv))
    return run.cache


def prefill(bb, image_embeds: torch.Tensor, *, routing=None) -> Prefilled:
    """(n, T, Hv) image tokens of joining rows -> their prompt pass: the decoder state after
    "[DEC] a picture of" and the first token's logits, under `routing` (n rows)."""
    bb.require("caption")
    n = image_embeds.shape[0]
    with routed_if_given(routing):
        ids, mask = tasks.caption_prompt(bb, n)  # (n, P) each; the prompt has no padding
        out = bb.text_decoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                              encoder_attention_mask=tasks._ones_mask(image_embeds), use_cache=True,
                              return_dict=True)
    cache = out.cache
    rows = Running(_kv(cache.self_attention_cache), _kv(cache.cross_attention_cache), image_embeds, mask,
                   torch.empty(0, dtype=torch.long), cache)
    return Prefilled(rows, out.logits[:, -1, :].float())  # generate() scores in float32 too


def step(bb, run: Running, *, routing=None) -> torch.Tensor:
    """Every running row feeds its `last` token: (B, V) float32 logits of the next one.
    Updates `run` in place (its cache and mask grow by one column)."""
    b = run.size
    mask = torch.cat([run.mask, run.mask.new_ones(b, 1)], dim=1)  # (B, S + 1): the new token is real
    positions = run.mask.sum(1, keepdim=True)  # (B, 1): a row's real length is its next position id
    with routed_if_given(routing):
        out = bb.text_decoder(input_ids=run.last[:, None], attention_mask=mask, position_ids=positions,
                              encoder_hidden_states=run.embeds, encoder_attention_mask=tasks._ones_mask(run.embeds),
                              cache=_cache(run), use_cache=True, return_dict=True)
    run.cache = out.cache  # the same object, grown in place by one column
    run.self_kv = _kv(out.cache.self_attention_cache)  # (B, nh, S + 1, hs)
    run.mask = mask
    return out.logits[:, -1, :].float()


def choose(bb, logits: torch.Tensor, generated: torch.Tensor, min_new_tokens: torch.Tensor) -> torch.Tensor:
    """Greedy choice as generate() makes it: (B, V) logits, tokens generated so far (B,) and
    each row's minimum (B,) -> (B,) next tokens; [SEP] is barred until a row's minimum."""
    sep = bb.config.text_config.sep_token_id
    early = generated < min_new_tokens
    if bool(early.any()):
        logits = logits.clone()
        logits[early, sep] = -float("inf")
    return logits.argmax(-1)


def _left_pad(t: torch.Tensor, to: int) -> torch.Tensor:
    """(B, ..., L, hs) or (B, L) -> length `to` along the sequence axis, zeros on the left."""
    dim = 1 if t.dim() == 2 else -2
    missing = to - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def merge(run: Running | None, new: Running, first: torch.Tensor) -> Running:
    """Joining rows (their first tokens `first` (n,)) appended after the running ones."""
    new.last = first
    if run is None:
        return new
    s = max(run.mask.shape[1], new.mask.shape[1])

    def cat(a: KV, b: KV, pad: bool) -> KV:
        fit = (lambda t: _left_pad(t, s)) if pad else (lambda t: t)
        return [(torch.cat([fit(ka), fit(kb)]), torch.cat([fit(va), fit(vb)])) for (ka, va), (kb, vb) in zip(a, b)]

    return Running(cat(run.self_kv, new.self_kv, True), cat(run.cross_kv, new.cross_kv, False),
                   torch.cat([run.embeds, new.embeds]), torch.cat([_left_pad(run.mask, s), _left_pad(new.mask, s)]),
                   torch.cat([run.last, first]))
