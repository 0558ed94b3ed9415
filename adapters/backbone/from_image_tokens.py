"""Task predictions from image tokens computed beforehand: the vision tower split off.

The server runs the ViT once per (image, vision-side adapter state) and hands the image
tokens to these functions, which run everything after the vision encoder under the
batch's per-row routing. Each mirrors its `tasks` / `predict` counterpart step by step
(same prompt, masks, decoding defaults, suppressed ids), so with `image_embeds =
tasks.encode_image(bb, px)` under the same routing they return what those return.

    embeds = tasks.encode_image(bb, px)                        # (B, 1 + patches, Hv), once per image
    from_image_tokens.captions(bb, embeds, routing=r)          # B captions
    from_image_tokens.answers(bb, embeds, ids, routing=r)      # B answers, questions of any length
    from_image_tokens.rank_answers(bb, embeds, ids, [["yes", "no"], ...], routing=r)
    from_image_tokens.itc_image(bb, embeds, routing=r)         # (B, D) unit ITC vectors
    from_image_tokens.itm_logits(bb, embeds, ids, mask, routing=r)   # (B, 2)

A row of `image_embeds` may repeat another's (one image, many adapters): rows are
independent, so each row gets what it would get in a batch of its own.
"""

from __future__ import annotations

import torch

from adapters.backbone import predict, tasks
from adapters.runtime.routing import routed_if_given


def captions(bb, image_embeds: torch.Tensor, *, num_beams: int | None = None, max_new_tokens: int | None = None,
             routing=None) -> list[str]:
    """(B, T, Hv) image tokens -> B captions (prompt removed), as `predict.captions`."""
    bb.require("caption")
    d = predict.decoding("caption", num_beams, max_new_tokens)
    with routed_if_given(routing):
        input_ids, attention_mask = tasks.caption_prompt(bb, image_embeds.shape[0])
        ids = tasks._generate(bb, input_ids, attention_mask, image_embeds, d.num_beams, d.max_new_tokens,
                              d.min_new_tokens)
    prompt_len = input_ids.shape[1]
    return [t.strip() for t in bb.processor.tokenizer.batch_decode(ids[:, prompt_len:], skip_special_tokens=True)]


def _question_states(bb, image_embeds, ids: list[torch.Tensor]):
    input_ids, mask = predict.pad_questions(bb, ids)
    return tasks.fuse(bb, input_ids, mask, image_embeds), tasks.question_mask(input_ids, mask)  # (B, Lq, Ht), (B, Lq)


def answers(bb, image_embeds: torch.Tensor, ids: list[torch.Tensor], *, num_beams: int | None = None,
            max_new_tokens: int | None = None, routing=None) -> list[str]:
    """B image-token rows and B questions (L_i,) -> B answers, as `predict.answers`."""
    bb.require("vqa")
    d = predict.decoding("vqa", num_beams, max_new_tokens)
    with routed_if_given(routing):
        states, states_mask = _question_states(bb, image_embeds, ids)
        bos = torch.full((states.shape[0], 1), bb.config.text_config.bos_token_id, dtype=torch.long,
                         device=states.device)
        out = tasks._generate(bb, bos, None, states, d.num_beams, d.max_new_tokens, d.min_new_tokens,
                              states_mask=states_mask, suppress_ids=predict.suppressed_ids(bb))
    texts = [t.strip() for t in bb.processor.tokenizer.batch_decode(out, skip_special_tokens=True)]
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        raise RuntimeError(f"answers {empty} decoded to '' from ids {out[empty].tolist()}")
    return texts


def rank_answers(bb, image_embeds: torch.Tensor, ids: list[torch.Tensor], candidates: list[list[str]], *,
                 routing=None) -> list[torch.Tensor]:
    """Log-likelihood of each candidate per question: list of (C_i,), as `predict.rank_answers`."""
    bb.require("vqa")
    if len(candidates) != image_embeds.shape[0]:
        raise ValueError("candidates needs one non-empty list per image")
    with routed_if_given(routing):
        states, states_mask = _question_states(bb, image_embeds, ids)
        return tasks.rank_candidates(bb, states, states_mask, candidates)


def itc_image(bb, image_embeds: torch.Tensor, *, routing=None) -> torch.Tensor:
    """(B, T, Hv) -> (B, D) unit ITC vectors. vision_proj is never adapted; the routing
    matters for video tokens (B, F*T, Hv) only: an adapter's temporal module acts on them."""
    bb.require("retrieve")
    with routed_if_given(routing):
        return tasks.image_features(bb, image_embeds)


def itm_logits(bb, image_embeds: torch.Tensor, input_ids, attention_mask=None, *, routing=None) -> torch.Tensor:
    """ITM logits (B, 2) of row-aligned image-token / text pairs, as `tasks.itm_logits`."""
    bb.require("retrieve")
    with routed_if_given(routing):
        fused = tasks.fuse(bb, input_ids, attention_mask, image_embeds)
        return bb.itm_head(fused[:, 0, :])
