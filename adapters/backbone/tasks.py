"""Batched task functions on a `Backbone`: caption, VQA, ITC embeddings, ITM scores, for
images (B, 3, H, W) and videos (B, F, 3, H, W) alike (see `encode_image`).

Every function takes tensors for a whole batch and an optional `routing` (the
per-row adapter choice, see `adapters.runtime.routing`), entered for the whole call;
without one, the routing already in force (none: the frozen backbone) applies.
They mirror transformers' BLIP task classes step by step, so with no adapters they
return exactly what `BlipForConditionalGeneration.generate`,
`BlipForQuestionAnswering.generate` and `BlipForImageTextRetrieval` return on the
same weights. None of them disables autograd: inference callers wrap them in
`torch.inference_mode()`, training calls the encoders with gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adapters.runtime.routing import current_routing, routed_if_given

CAPTION_PROMPT = "a picture of "


def _ones_mask(embeds: torch.Tensor) -> torch.Tensor:
    return torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)


# -- inputs ------------------------------------------------------------------------
def pixels(bb, images) -> torch.Tensor:
    """PIL images (any mode) -> (B, 3, H, W) on the backbone's device and dtype."""
    out = bb.processor.image_processor([im.convert("RGB") for im in images], return_tensors="pt")
    return out.pixel_values.to(bb.device, bb.dtype)


def tokens(bb, texts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> ([CLS] ... [SEP] ids (B, L), attention mask (B, L)), padded to the longest."""
    enc = bb.processor.tokenizer(list(texts), padding="longest", truncation=max_length is not None,
                                 max_length=max_length, return_tensors="pt")
    return enc.input_ids.to(bb.device), enc.attention_mask.to(bb.device)


def video_pixels(bb, videos) -> torch.Tensor:
    """Videos, each a list of F PIL frames (F equal across the batch) -> (B, F, 3, H, W)."""
    if len({len(v) for v in videos}) != 1:
        raise ValueError("videos of one batch need the same frame count")
    px = pixels(bb, [im for v in videos for im in v])  # (B*F, 3, H, W), each video's frames consecutive
    return px.view(len(videos), len(videos[0]), *px.shape[1:])


# -- encoders (differentiable; used by inference and training) -------------------------
# Video is BLIP's video transfer: 5-D pixels (B, F, 3, H, W) send each frame through the ViT
# as B*F rows (each request's frames consecutive, so a B-row routing expands to them like
# beams: `expand_rows`), and the frames' tokens are concatenated, (B, F*T, Hv), for every
# consumer that cross-attends them (fusion encoder, decoder, ITM). ITC (`image_features`)
# takes the mean of the frames' [CLS] vectors, projected. F = 1 is exactly the image path.
# An adapter's temporal module (adapters/kinds/vcra/temporal.py) acts on the frame tokens
# where they are read after the ViT, under the call's routing: `fuse` and `image_features`
# run them through `temporal` first (the server's vision stage hands them raw ViT tokens).
def frame_tokens(bb) -> int:
    """Tokens one image (one frame) becomes: [CLS] + patches (T)."""
    vc = bb.config.vision_config
    return 1 + (vc.image_size // vc.patch_size) ** 2


def encode_image(bb, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> image tokens (B, T, Hv), T = 1 + patches; video (B, F, 3, H, W) ->
    the frames' tokens concatenated (B, F*T, Hv)."""
    if pixel_values.dim() == 5:
        b, f = pixel_values.shape[:2]
        tokens_ = bb.vision_model(pixel_values=pixel_values.flatten(0, 1).to(bb.dtype))[0]  # (B*F, T, Hv)
        return tokens_.reshape(b, f * tokens_.shape[1], tokens_.shape[2])
    return bb.vision_model(pixel_values=pixel_values.to(bb.dtype))[0]


def temporal(bb, image_embeds: torch.Tensor) -> torch.Tensor:
    """Video tokens (B, F*T, Hv) through the routed adapters' temporal modules, per row;
    images (B, T, Hv), one-frame videos, and calls without such an adapter: unchanged (the
    same tensor). F is read off the length."""
    routing = current_routing()
    t = frame_tokens(bb)
    b, length, hidden = image_embeds.shape
    if routing is None or not routing.has_frames or length <= t:
        return image_embeds
    if length % t:
        raise ValueError(f"{length} image tokens are not a whole number of {t}-token frames")
    frames = routing.frames(image_embeds.view(b, length // t, t, hidden))  # (B, F, T, Hv)
    return frames.reshape(b, length, hidden)


def encode_text(bb, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Unimodal text encoder (no cross attention): (B, L) -> (B, L, Ht)."""
    return bb.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def fuse(bb, input_ids, attention_mask, image_embeds: torch.Tensor) -> torch.Tensor:
    """The fusion encoder: text self-attention + cross-attention to image tokens -> (B, L, Ht)
    (video tokens through the routed temporal modules first)."""
    image_embeds = temporal(bb, image_embeds)
    return bb.text_encoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=_ones_mask(image_embeds),
    ).last_hidden_state


def image_features(bb, image_embeds: torch.Tensor) -> torch.Tensor:
    """ITC image vector from the [CLS] image token: (B, T, Hv) -> (B, D), unit norm. Video
    tokens (B, F*T, Hv) (F read off the length): the frames' [CLS] averaged, projected and
    normalised (UniAdapter's order; vision_proj is affine, so it equals the mean of the
    projected frames, BLIP's video retrieval); a routed temporal module acts on the frame
    tokens first."""
    image_embeds = temporal(bb, image_embeds)
    t = frame_tokens(bb)
    b, length, hidden = image_embeds.shape
    if length == t:
        return F.normalize(bb.vision_proj(image_embeds[:, 0, :]), dim=-1)
    if length % t:
        raise ValueError(f"{length} image tokens are not a whole number of {t}-token frames")
    cls = image_embeds.view(b, length // t, t, hidden)[:, :, 0, :]  # (B, F, Hv)
    return F.normalize(bb.vision_proj(cls.mean(dim=1)), dim=-1)


def text_features(bb, text_embeds: torch.Tensor) -> torch.Tensor:
    """ITC text vector from the [CLS] text token: (B, L, Ht) -> (B, D), unit norm."""
    return F.normalize(bb.text_proj(text_embeds[:, 0, :]), dim=-1)


def _generate(bb, input_ids, attention_mask, states, num_beams, max_new_tokens, min_new_tokens,
              states_mask: torch.Tensor | None = None, suppress_ids: list[int] | None = None) -> torch.Tensor:
    """The decoder's greedy/beam search cross-attending `states` (B, L, H) under `states_mask`
    (B, L; None = all ones, as for image tokens), ending at [SEP], with the arguments
    transformers' BLIP task classes pass; `suppress_ids` are never generated (None = none)."""
    text_config = bb.config.text_config
    return bb.text_decoder.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        encoder_hidden_states=states,
        encoder_attention_mask=_ones_mask(states) if states_mask is None else states_mask,
        eos_token_id=text_config.sep_token_id,
        pad_token_id=text_config.pad_token_id,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        suppress_tokens=suppress_ids,
        do_sample=False,
    )


# -- captioning -----------------------------------------------------------------
def caption_prompt(bb, batch_size: int, prompt: str = CAPTION_PROMPT) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids as the decoder sees them: [DEC] prompt tokens, trailing [SEP] dropped. (B, P)"""
    enc = bb.processor.tokenizer([prompt] * batch_size, return_tensors="pt")
    ids = enc.input_ids.to(bb.device)
    ids[:, 0] = bb.config.text_config.bos_token_id
    return ids[:, :-1], enc.attention_mask.to(bb.device)[:, :-1]


def caption_ids(bb, pixel_values, *, num_beams: int = 1, max_new_tokens: int = 30, min_new_tokens: int = 0,
                prompt: str = CAPTION_PROMPT, routing=None) -> torch.Tensor:
    """(B, 3, H, W) -> generated ids (B, T), starting with [DEC] and the prompt."""
    bb.require("caption")
    with routed_if_given(routing):
        image_embeds = encode_image(bb, pixel_values)
        input_ids, attention_mask = caption_prompt(bb, pixel_values.shape[0], prompt)
        return _generate(bb, input_ids, attention_mask, image_embeds, num_beams, max_new_tokens, min_new_tokens)


def caption(bb, pixel_values, *, prompt: str = CAPTION_PROMPT, **kwargs) -> list[str]:
    """Captions without the prompt, e.g. ["two red circles left of a blue square"]."""
    ids = caption_ids(bb, pixel_values, prompt=prompt, **kwargs)
    prompt_len = caption_prompt(bb, 1, prompt)[0].shape[1]
    return [t.strip() for t in bb.processor.tokenizer.batch_decode(ids[:, prompt_len:], skip_special_tokens=True)]


# -- visual question answering ----------------------------------------------------------
def question_states(bb, pixel_values, input_ids, attention_mask) -> torch.Tensor:
    """The question fused with the image: (B, Lq, Ht), the decoder's cross-attention input."""
    return fuse(bb, input_ids, attention_mask, encode_image(bb, pixel_values))


def question_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The decoder's cross-attention mask over question states: the question's own mask
    (BLIP/LAVIS), so padding added by batching never reaches the answer. (B, Lq)"""
    return torch.ones_like(input_ids) if attention_mask is None else attention_mask


def vqa_ids(bb, pixel_values, input_ids, attention_mask=None, *, num_beams: int = 1, max_new_tokens: int = 10,
            min_new_tokens: int = 0, suppress_ids: list[int] | None = None, routing=None) -> torch.Tensor:
    """Generated answer ids (B, T), starting with [DEC]. Questions (B, Lq) may be padded:
    the decoder sees only each question's own positions (`question_mask`)."""
    bb.require("vqa")
    text_config = bb.config.text_config
    with routed_if_given(routing):
        states = question_states(bb, pixel_values, input_ids, attention_mask)
        bos = torch.full((states.shape[0], 1), text_config.bos_token_id, dtype=torch.long, device=states.device)
        return _generate(bb, bos, None, states, num_beams, max_new_tokens, min_new_tokens,
                         states_mask=question_mask(input_ids, attention_mask), suppress_ids=suppress_ids)


def vqa(bb, pixel_values, input_ids, attention_mask=None, **kwargs) -> list[str]:
    ids = vqa_ids(bb, pixel_values, input_ids, attention_mask, **kwargs)
    return [t.strip() for t in bb.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def answer_log_likelihood(bb, states: torch.Tensor, answers: list[str],
                          states_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of token log-probs of each answer (+ its [SEP]) given fused question states.
    states (N, Lq, Ht) under states_mask (N, Lq; None = all ones) and answers (N,) pair
    up row by row -> (N,)."""
    tok = bb.processor.tokenizer(answers, padding="longest", return_tensors="pt")
    ids = tok.input_ids.to(states.device)
    mask = tok.attention_mask.to(states.device)
    ids[:, 0] = bb.config.text_config.bos_token_id
    logits = bb.text_decoder(
        input_ids=ids,
        attention_mask=mask,
        encoder_hidden_states=states,
        encoder_attention_mask=_ones_mask(states) if states_mask is None else states_mask,
        return_dict=True,
    ).logits  # (N, L, V)
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (N, L-1)
    return (logp * mask[:, 1:]).sum(-1)


def rank_candidates(bb, states: torch.Tensor, states_mask: torch.Tensor,
                    candidates: list[list[str]]) -> list[torch.Tensor]:
    """Log-likelihood of each candidate answer given fused question states (B, Lq, Ht) under
    their mask (B, Lq): list of (C_i,). Candidate lists are padded to the longest so each
    row's candidates are k consecutive rows (the layout `expand_rows` routes). Runs under
    whatever routing is in force."""
    if len(candidates) != states.shape[0] or any(len(c) == 0 for c in candidates):
        raise ValueError("candidates needs one non-empty list per image")
    k = max(len(c) for c in candidates)
    flat = [c[j] if j < len(c) else c[0] for c in candidates for j in range(k)]
    scores = answer_log_likelihood(bb, states.repeat_interleave(k, dim=0), flat,
                                   states_mask.repeat_interleave(k, dim=0)).view(-1, k)
    return [scores[i, : len(c)] for i, c in enumerate(candidates)]


def vqa_rank(bb, pixel_values, input_ids, attention_mask, candidates: list[list[str]], *, routing=None) -> list[torch.Tensor]:
    """Log-likelihood of each given candidate answer, per question: list of (C_i,)."""
    bb.require("vqa")
    if len(candidates) != pixel_values.shape[0]:
        raise ValueError("candidates needs one non-empty list per image")
    with routed_if_given(routing):
        states = question_states(bb, pixel_values, input_ids, attention_mask)  # (B, Lq, Ht)
        return rank_candidates(bb, states, question_mask(input_ids, attention_mask), candidates)


# -- retrieval ------------------------------------------------------------------
def itc_image(bb, pixel_values, *, routing=None) -> torch.Tensor:
    bb.require("retrieve")
    with routed_if_given(routing):
        return image_features(bb, encode_image(bb, pixel_values))


def itc_text(bb, input_ids, attention_mask=None, *, routing=None) -> torch.Tensor:
    bb.require("retrieve")
    with routed_if_given(routing):
        return text_features(bb, encode_text(bb, input_ids, attention_mask))


def itm_logits(bb, pixel_values, input_ids, attention_mask=None, *, routing=None) -> torch.Tensor:
    """ITM logits (B, 2) of row-aligned image-text pairs; softmax[:, 1] is P(match)."""
    bb.require("retrieve")
    with routed_if_given(routing):
        fused = fuse(bb, input_ids, attention_mask, encode_image(bb, pixel_values))
        return bb.itm_head(fused[:, 0, :])


def itm_scores(bb, pixel_values, input_ids, attention_mask=None, *, routing=None) -> torch.Tensor:
    return itm_logits(bb, pixel_values, input_ids, attention_mask, routing=routing).float().softmax(-1)[:, 1]
