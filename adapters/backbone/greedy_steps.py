"""Greedy caption decoding one token at a time over a batch of slots whose rows come and
go (iteration-level, "continuous" batching). The server's scheduler (server/continuous.py)
drives it; the math is here, next to `from_image_tokens.captions`, whose tokens it
reproduces row for row.

    slots = Slots.open(bb, image_embeds, routing=r_new)      # first rows (cross K/V under r_new)
    logits = step(bb, slots, routing=r_all)                  # (B, V): every slot advances one token
    slots.free([2])                                          # row 2 finished: its slot is free
    slots.place(bb, [2], image_embeds_new, routing=r_new)    # a new row starts in slot 2

Why slots. Finished rows leave and new rows take their slot in place: nothing else of
the batch is copied, and the batch's routing changes only when rows join. A new row feeds
its prompt "[DEC] a picture of" one token per step like any other row (forced tokens;
the logits after the last one give its first word), so every step is ONE decoder forward
of query length 1, however many rows joined. A free slot is computed and ignored until
reused (`compact` drops free slots when they outnumber the rows).

Layout. The self-attention cache is (B, nh, S, hs), one column per step of the batch;
`mask` (B, S) marks each row's own columns (1) among those written before it joined or
by the slot's previous row (0). BLIP's text embeddings take the position from the cache
length, one number for the whole batch, so `step` hands `position_ids` explicitly: a
row's next position is its own length, what it gets in a batch of its own. Masked
columns get the additive mask's minimum, so their softmax weight is exactly 0 and they
add exact zeros; what remains are float summation-order differences, as between any two
batch compositions today (argmax is what must agree; the tests check token for token).
Columns masked in every row are cut from the front (`step`, every TRIM columns).

Only greedy search: beams reorder rows inside a request, which a slot does not model;
VQA (3 beams) and num_beams > 1 captions stay on `from_image_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from adapters.backbone import tasks
from adapters.runtime.routing import routed_if_given

TRIM = 8  # cut leading all-masked columns once this many (the cut copies the self-attention cache)


def prompt_ids(bb) -> list[int]:
    """The caption prompt as the decoder is fed it: [DEC] a picture of (P ids)."""
    return tasks.caption_prompt(bb, 1)[0][0].tolist()


def cross_kv(bb, image_embeds: torch.Tensor, *, routing=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(n, T, Hv) image tokens -> per decoder layer the cross-attention (keys, values), each
    (n, nh, T, hs), projected as the attention module projects them (its own key/value
    layers, adapters included, under `routing` of n rows)."""
    out = []
    with routed_if_given(routing):
        for layer in bb.text_decoder.bert.encoder.layer:
            att = layer.crossattention.self
            shape = (*image_embeds.shape[:-1], -1, att.attention_head_size)  # (n, T, nh, hs)
            out.append((att.key(image_embeds).view(shape).transpose(1, 2),
                        att.value(image_embeds).view(shape).transpose(1, 2)))
    return out


@dataclass
class Slots:
    cache: EncoderDecoderCache  # self: (B, nh, S, hs) per layer; cross: (B, nh, T, hs), reused every step
    embeds: torch.Tensor  # (B, T, Hv) image tokens; the decoder needs them to run its cross-attention
    mask: torch.Tensor  # (B, S) long: 1 on a row's own cache columns
    feed: torch.Tensor  # (B,) the token each slot feeds next (a prompt token, or its latest word)
    idle: torch.Tensor  # (B,) bool: a free slot (computed, never read, its columns masked)

    @property
    def size(self) -> int:
        return self.feed.shape[0]

    @staticmethod
    def open(bb, image_embeds: torch.Tensor, *, routing=None) -> "Slots":
        """Slots for n new rows, each about to feed [DEC]."""
        n, device = image_embeds.shape[0], image_embeds.device
        kv = cross_kv(bb, image_embeds, routing=routing)
        empty = DynamicCache([(k[:, :, :0], v[:, :, :0]) for k, v in kv])  # (n, nh, 0, hs): no columns yet
        bos = torch.full((n,), bb.config.text_config.bos_token_id, dtype=torch.long, device=device)
        return Slots(EncoderDecoderCache(empty, DynamicCache(kv)), image_embeds,
                     torch.zeros((n, 0), dtype=torch.long, device=device), bos,
                     torch.zeros(n, dtype=torch.bool, device=device))

    def free(self, slots: list[int]) -> None:
        """Rows in `slots` are done: mask their columns (the slot is computed, unread, until reused)."""
        self.mask[slots] = 0
        self.idle[slots] = True

    def place(self, bb, slots: list[int], image_embeds: torch.Tensor, *, routing=None) -> None:
        """New rows (n, T, Hv) into free `slots` (n), in place: their cross K/V (under `routing`
        of the n new rows), no columns of their own yet, [DEC] next."""
        index = torch.tensor(slots, dtype=torch.long, device=self.mask.device)
        for layer, (k, v) in zip(self.cache.cross_attention_cache.layers, cross_kv(bb, image_embeds, routing=routing)):
            layer.keys[index] = k
            layer.values[index] = v
        self.embeds[index] = image_embeds
        self.mask[index] = 0
        self.idle[index] = False
        self.feed[index] = bb.config.text_config.bos_token_id

    def extend(self, other: "Slots") -> "Slots":
        """`other`'s slots after these (copies every tensor: used while the batch grows)."""
        s = max(self.mask.shape[1], other.mask.shape[1])
        selfs = [(torch.cat([_left_pad(a.keys, s), _left_pad(b.keys, s)]),
                  torch.cat([_left_pad(a.values, s), _left_pad(b.values, s)]))
                 for a, b in zip(self.cache.self_attention_cache.layers, other.cache.self_attention_cache.layers)]
        cross = [(torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values]))
                 for a, b in zip(self.cache.cross_attention_cache.layers, other.cache.cross_attention_cache.layers)]
        return Slots(EncoderDecoderCache(DynamicCache(selfs), DynamicCache(cross)),
                     torch.cat([self.embeds, other.embeds]),
                     torch.cat([_left_pad(self.mask, s), _left_pad(other.mask, s)]), torch.cat([self.feed, other.feed]),
                     torch.cat([self.idle, other.idle]))

    def compact(self, keep: list[int]) -> "Slots":
        """Only slots `keep` (copies every tensor: used when free slots outnumber rows)."""
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        selfs = [(l.keys[index], l.values[index]) for l in self.cache.self_attention_cache.layers]
        cross = [(l.keys[index], l.values[index]) for l in self.cache.cross_attention_cache.layers]
        return Slots(EncoderDecoderCache(DynamicCache(selfs), DynamicCache(cross)), self.embeds[index],
                     self.mask[index], self.feed[index], self.idle[index])

    def _trim(self) -> None:
        used = (self.mask.sum(0) > 0).long()
        cut = int(used.argmax()) if bool(used.any()) else self.mask.shape[1]
        if cut < TRIM:
            return
        selfs = [(l.keys[:, :, cut:], l.values[:, :, cut:]) for l in self.cache.self_attention_cache.layers]
        self.cache = EncoderDecoderCache(DynamicCache(selfs), self.cache.cross_attention_cache)
        self.mask = self.mask[:, cut:]


def _left_pad(t: torch.Tensor, to: int) -> torch.Tensor:
    """(B, ..., L, hs) or (B, L) -> length `to` along the sequence axis, zeros on the left."""
    dim = 1 if t.dim() == 2 else -2
    missing = to - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def step(bb, slots: Slots, *, routing=None) -> torch.Tensor:
    """Every slot feeds its `feed` token: (B, V) float32 logits of its next one (as generate()
    scores). The cache and mask grow by one column in place; the caller sets the next `feed`."""
    slots._trim()
    b = slots.size
    mask = torch.cat([slots.mask, slots.mask.new_ones(b, 1)], dim=1)  # (B, S + 1): the fed token is the row's
    positions = slots.mask.sum(1, keepdim=True)  # (B, 1): a row's own length is its next position id
    with routed_if_given(routing):
        out = bb.text_decoder(input_ids=slots.feed[:, None], attention_mask=mask, position_ids=positions,
                              encoder_hidden_states=slots.embeds,
                              encoder_attention_mask=tasks._ones_mask(slots.embeds), cache=slots.cache,
                              use_cache=True, return_dict=True)
    slots.cache = out.cache  # the same object, its self-attention grown by one column
    mask[slots.idle] = 0  # a free slot's column is nobody's (and must not stop the trim)
    slots.mask = mask
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
