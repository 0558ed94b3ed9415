"""Grow a backbone's vocabulary: new words for its tokenizer, new rows for every token matrix.

    added = grow_vocabulary(bb, vocabulary_texts())   # [] when the tokenizer knew every word

A backbone pretrained before a word existed (e.g. the motion words of world clips) splits it
into characters. `training.shapes.pretrain --init` grows it before continuing: the tokenizer
gets the missing tokens appended after the old ids (`training.tokenizer.extend_tokenizer`),
and each token matrix gets rows for them: the text encoder's and the decoder's word
embeddings, the decoder's output matrix (tied to its input embedding, so the same tensor) and
its output bias. Old rows are unchanged, so the grown model gives every old-token logit
exactly as before; new rows start at the mean of the old rows (a neutral "some word").
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from training.tokenizer import extend_tokenizer


def _grown_embedding(old: nn.Embedding, n: int) -> nn.Embedding:
    """(V, H) -> (n, H): rows [0, V) copied, rows [V, n) = their mean."""
    new = nn.Embedding(n, old.embedding_dim, padding_idx=old.padding_idx, device=old.weight.device,
                       dtype=old.weight.dtype)
    with torch.no_grad():
        v = old.num_embeddings
        new.weight[:v] = old.weight
        new.weight[v:] = old.weight.mean(dim=0)
    new.weight.requires_grad_(old.weight.requires_grad)
    return new


def grow_vocabulary(bb, texts: Iterable[str]) -> list[str]:
    """Adds the tokens of `texts` missing from bb's tokenizer, in place; returns them."""
    tokenizer, added = extend_tokenizer(bb.processor.tokenizer, texts)
    if not added:
        return []
    n = len(tokenizer)
    if bb.text_encoder is not None:
        emb = bb.text_encoder.embeddings
        emb.word_embeddings = _grown_embedding(emb.word_embeddings, n)
    if bb.text_decoder is not None:
        dec = bb.text_decoder
        dec.bert.embeddings.word_embeddings = _grown_embedding(dec.bert.embeddings.word_embeddings, n)
        head = dec.cls.predictions
        old_bias = head.bias.detach()
        bias = nn.Parameter(torch.cat([old_bias, old_bias.mean().expand(n - len(old_bias))]),
                            requires_grad=head.bias.requires_grad)
        decoder = nn.Linear(head.decoder.in_features, n, bias=True, device=old_bias.device, dtype=old_bias.dtype)
        decoder.weight = dec.bert.embeddings.word_embeddings.weight  # tied (V, H), as transformers ties them
        decoder.bias = bias
        head.decoder, head.bias = decoder, bias
    bb.config.text_config.vocab_size = n  # the parts share this config object
    bb.processor.tokenizer = tokenizer
    bb._fingerprint = None
    return added
