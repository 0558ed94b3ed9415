"""Config of the small BLIP that `training.pretrain` trains from scratch, and its losses.

The model is `adapters.backbone.Backbone` (every BLIP part under transformers'
attribute names), so the saved state dict is the union of the task-class layouts.

Losses follow BLIP's pretraining (salesforce/BLIP models/blip_pretrain.py), without
its momentum encoder and queues (in-batch only):
- ITC: cosine similarities of vision_proj(image CLS) and text_proj(text CLS) over a
  learnable temperature (init 0.07, clamped to [0.001, 0.5]); pairs with the same
  caption string are all positives (as BLIP's retrieval finetuning does with ids).
- ITM: the text encoder cross-attending the image, itm_head on its first token;
  per image one negative text and per text one negative image sampled from the
  softmax of the ITC similarities (hard negatives), positives masked out.
  transformers' BlipForImageTextRetrieval feeds the processor's ids ([CLS] first)
  to ITM, so we train with [CLS] first too, not BLIP's [ENC].
- LM: the decoder over "a picture of <caption>", first token swapped to [DEC]
  (generate() does that swap; forward(labels=) does not), prompt tokens and
  padding masked from the loss.
Not run on its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import BlipConfig, BlipTextConfig, BlipVisionConfig

from adapters.backbone import Backbone


def make_config(ids: dict[str, int], hidden: int, layers: int, heads: int, image_size: int, patch: int,
                max_positions: int = 64) -> BlipConfig:
    """A BlipConfig with equal vision and text widths (VCRA shares one A, B across
    modalities). `ids` comes from training.tokenizer.blip_text_config_ids."""
    vision = BlipVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, image_size=image_size, patch_size=patch,
                              initializer_range=0.02)  # transformers' default 1e-10 suits loading, not training
    text = BlipTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, encoder_hidden_size=hidden,
                          max_position_embeddings=max_positions, **ids)
    return BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=hidden,
                      image_text_hidden_size=hidden)


def same_text(keys: list[str]) -> torch.Tensor:
    """(B, B) bool: rows i, j carry the same caption."""
    codes = {k: n for n, k in enumerate(dict.fromkeys(keys))}
    idx = torch.tensor([codes[k] for k in keys])
    return idx[:, None] == idx[None, :]


def _sample_negatives(sim: torch.Tensor, positive: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B,) index of a hard negative per row, drawn from softmax(sim) over non-positives.
    A row whose batch holds only positives falls back to any other row (its ITM label
    is then computed from the captions, so it is never mislabelled)."""
    weights = F.softmax(sim.float(), dim=1).masked_fill(positive, 0.0)
    empty = weights.sum(1) <= 0
    if empty.any():
        others = (~torch.eye(len(sim), dtype=torch.bool))[empty].float()
        weights[empty] = others if len(sim) > 1 else 1.0
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def pretrain_losses(model: Backbone, log_temp: torch.Tensor, batch: dict, generator: torch.Generator
                    ) -> dict[str, torch.Tensor]:
    """batch: pixel_values (B,3,H,W); text_ids/text_mask (B,T) caption alone;
    dec_ids/dec_mask (B,T') prompt + caption; prompt_len int; keys list[str] (caption)."""
    pixel_values, keys = batch["pixel_values"], batch["keys"]
    image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state  # (B, 1+P, h)
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    image_feat = F.normalize(model.vision_proj(image_embeds[:, 0]), dim=-1)  # (B, d)

    # ---- ITC: text encoder without the image (no encoder_hidden_states -> no cross-attention)
    text_ids, text_mask = batch["text_ids"], batch["text_mask"]
    text_embeds = model.text_encoder(input_ids=text_ids, attention_mask=text_mask).last_hidden_state
    text_feat = F.normalize(model.text_proj(text_embeds[:, 0]), dim=-1)  # (B, d)
    temp = log_temp.exp().clamp(0.001, 0.5)
    sim_i2t = image_feat @ text_feat.t() / temp  # (B, B)
    sim_t2i = sim_i2t.t()
    positive = same_text(keys)
    targets = positive.float() / positive.float().sum(1, keepdim=True)
    loss_itc = (-(F.log_softmax(sim_i2t, 1) * targets).sum(1).mean()
                - (F.log_softmax(sim_t2i, 1) * targets).sum(1).mean()) / 2

    # ---- ITM: positives, (image, hard negative text), (hard negative image, text)
    with torch.no_grad():
        neg_text = _sample_negatives(sim_i2t, positive, generator)  # for each image
        neg_image = _sample_negatives(sim_t2i, positive, generator)  # for each text
    ids = torch.cat([text_ids, text_ids[neg_text], text_ids])
    mask = torch.cat([text_mask, text_mask[neg_text], text_mask])
    images = torch.cat([image_embeds, image_embeds, image_embeds[neg_image]])
    fused = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=images,
                               encoder_attention_mask=torch.cat([image_atts] * 3)).last_hidden_state
    itm_logits = model.itm_head(fused[:, 0])  # (3B, 2)
    arange = torch.arange(len(keys))
    itm_labels = torch.cat([torch.ones(len(keys)), positive[arange, neg_text].float(),
                            positive[neg_image, arange].float()]).long()
    loss_itm = F.cross_entropy(itm_logits, itm_labels)

    # ---- LM: decoder over prompt + caption, [DEC] first, prompt and pads not scored
    dec_ids = batch["dec_ids"].clone()
    dec_ids[:, 0] = model.config.text_config.bos_token_id
    labels = dec_ids.masked_fill(batch["dec_mask"] == 0, -100)
    labels[:, : batch["prompt_len"]] = -100
    out = model.text_decoder(input_ids=dec_ids, attention_mask=batch["dec_mask"], encoder_hidden_states=image_embeds,
                             encoder_attention_mask=image_atts, labels=labels, reduction="mean")
    itm_acc = (itm_logits.argmax(1) == itm_labels).float().mean()
    return {"itc": loss_itc, "itm": loss_itm, "lm": out.loss, "itm_acc": itm_acc.detach(), "temp": temp.detach()}
