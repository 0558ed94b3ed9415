"""Training losses of the three tasks, on the frozen backbone with whatever adapter is live.

- caption: BLIP's LM loss on "a picture of <caption>", first token [DEC] (what
  generate() feeds), prompt and padding masked from the loss.
- vqa: BLIP's answer LM loss: the question fused with the image (text encoder with
  cross attention) conditions the decoder on each distinct answer; per-answer
  summed NLL weighted by the answer's frequency, summed per question, batch mean.
- retrieval: ITC (in-batch, same-image pairs are positives) + MCAM (paper 3.3.2,
  eq. 9: JS divergence between each image's softmax over texts and the matching
  text's softmax over images) + ITM on hard negatives sampled from the ITC softmax.

Eq. 7 (ITC) and eq. 9 (MCAM) are sums over the batch in the paper; both are divided
by the batch size here, which keeps their ratio and makes the loss batch-size free.
Every loss takes `route`: batch size -> the routing of the live adapter for a call of
that many rows (adapters.routing); each backbone call enters it for its own rows,
since the decoder of VQA and the ITM of retrieval see more rows than there are images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from adapters import tasks
from adapters.runtime.routing import routed

Route = Callable[[int], Any]


def _ones_mask(embeds: torch.Tensor) -> torch.Tensor:
    return torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)


def lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, bos: int, masked_prefix: int = 0):
    """(decoder ids with [DEC] first, labels with padding and the first `masked_prefix`
    positions set to -100). The decoder shifts labels by one inside its loss."""
    ids = input_ids.clone()
    ids[:, 0] = bos
    labels = ids.masked_fill(attention_mask == 0, -100)
    labels[:, :masked_prefix] = -100
    return ids, labels


def caption_loss(bb, batch: dict, route: Route) -> torch.Tensor:
    ids, labels = lm_labels(batch["input_ids"], batch["attention_mask"], bb.config.text_config.bos_token_id,
                            batch["prompt_len"])
    with routed(route(len(ids))):
        image_embeds = tasks.encode_image(bb, batch["pixel_values"])  # (B, 1+P, Hv)
        out = bb.text_decoder(input_ids=ids, attention_mask=batch["attention_mask"], encoder_hidden_states=image_embeds,
                              encoder_attention_mask=_ones_mask(image_embeds), labels=labels, reduction="mean")
    return out.loss


def vqa_loss(bb, batch: dict, route: Route) -> torch.Tensor:
    with routed(route(len(batch["input_ids"]))):
        states = tasks.question_states(bb, batch["pixel_values"], batch["input_ids"],
                                       batch["attention_mask"])  # (B, Lq, H)
    rows = batch["answer_rows"].to(states.device)  # (A,) question of each answer
    states = states[rows]  # (A, Lq, H)
    states_mask = batch["attention_mask"].to(states.device)[rows]  # (A, Lq): padding never attended (BLIP/LAVIS)
    ids, labels = lm_labels(batch["answer_ids"], batch["answer_mask"], bb.config.text_config.bos_token_id)
    with routed(route(len(ids))):
        nll = bb.text_decoder(input_ids=ids, attention_mask=batch["answer_mask"], encoder_hidden_states=states,
                              encoder_attention_mask=states_mask, labels=labels,
                              reduction="none").loss  # (A,) summed over tokens
    weight = batch["answer_weight"].to(nll.device, nll.dtype)
    return (weight * nll).sum() / batch["pixel_values"].shape[0]


def itc_loss(sim: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """sim (N, N) image x text logits (already / temperature); positive (N, N) bool.
    Cross entropy both ways against the positives' uniform distribution, batch mean."""
    targets = positive.float() / positive.float().sum(1, keepdim=True)
    i2t = -(F.log_softmax(sim, dim=1) * targets).sum(1).mean()
    t2i = -(F.log_softmax(sim.t(), dim=1) * targets.t()).sum(1).mean()
    return (i2t + t2i) / 2


def mcam_loss(cos: torch.Tensor, tau: float) -> torch.Tensor:
    """Paper eq. 9: mean_i JS( softmax(S[i, :]/tau) || softmax(S[:, i]/tau) ) for the
    (N, N) cosine matrix S, images x texts. Zero iff every row equals its column
    (e.g. S symmetric); no parameters."""
    log_p = F.log_softmax(cos.float() / tau, dim=1)  # row i: image i over texts
    log_q = F.log_softmax(cos.float().t() / tau, dim=1)  # row i: text i over images
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - torch.log(torch.tensor(2.0))
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(1)
    return (0.5 * (kl_pm + kl_qm)).mean()


def hard_negatives(sim: torch.Tensor, positive: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N,) one negative column per row of `sim`, drawn from softmax(sim) over the
    non-positives (BLIP). A row whose batch holds only positives draws uniformly
    from the other rows; its ITM label then comes from `positive`, so it is right."""
    weights = F.softmax(sim.detach().float(), dim=1).masked_fill(positive, 0.0)
    empty = weights.sum(1) <= 0
    if empty.any():
        n = len(sim)
        weights[empty] = (~torch.eye(n, dtype=torch.bool, device=sim.device))[empty].float() if n > 1 else 1.0
    return torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1).to(sim.device)


def sibling_negatives(drawn: torch.Tensor, sibling: torch.Tensor, allowed: torch.Tensor, share: float,
                      generator: torch.Generator) -> torch.Tensor:
    """(N,) ITM negatives: each row's `sibling` in place of its `drawn` one for a `share` of
    the rows where `allowed` (the sibling's text is false of the row's image, or the sibling
    image false of the row's text)."""
    take = (torch.rand(len(drawn), generator=generator) < share).to(drawn.device) & allowed
    return torch.where(take, sibling, drawn)


@dataclass(frozen=True)
class RetrievalLossConfig:
    temp: float = 0.07  # ITC temperature tau_1 (BLIP's init value), fixed
    mcam: bool = False  # add the MCAM term (UniTrans); off gives plain BLIP ITC + ITM
    mcam_tau: float = 0.07  # tau of eq. 9, the softmax temperature of the rank distributions
    mcam_weight: float = 1.0  # L_all = L_ITC + weight * L_ITR (the paper uses 1)
    itm: bool = True  # ITM with hard negatives (trains the fusion encoder and itm re-ranking)
    # pretraining on sibling pairs: share of rows whose ITM negative is their sibling's text
    # (and, per text, the sibling image) whenever that is a negative, instead of the ITC-drawn
    # one. ITC barely tells mirrored siblings apart, so the drawn negatives rarely test the
    # relation; 0 = BLIP's drawing only.
    sibling_negatives: float = 0.0


def retrieval_loss(bb, batch: dict, route: Route, cfg: RetrievalLossConfig,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Returns {"loss", "itc", "mcam", "itm", "itm_acc"}. tau_1 is fixed (cfg.temp): a learnable
    one would be a trainable parameter outside the adapter file. Pairs of the same image
    (`image_idx`) are positives of each other."""
    with routed(route(len(batch["input_ids"]))):
        image_embeds = tasks.encode_image(bb, batch["pixel_values"])  # (N, 1+P, Hv)
    idx = batch["image_idx"].to(image_embeds.device)
    out = contrastive_and_matching(bb, batch["input_ids"], batch["attention_mask"], image_embeds,
                                   idx[:, None] == idx[None, :], route, cfg, generator)
    out["loss"] = out["itc"] + cfg.mcam_weight * out["mcam"] + out["itm"]
    return out


def contrastive_and_matching(bb, ids, mask, image_embeds: torch.Tensor, positive: torch.Tensor, route: Route,
                             cfg: RetrievalLossConfig, generator: torch.Generator,
                             sibling: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """ITC (+ MCAM) and ITM with hard negatives for N row-aligned (image, text) pairs.
    ids/mask (N, L) texts; image_embeds (N, 1+P, Hv); positive (N, N) bool, images x
    texts: which texts are true of which images (the diagonal at least); sibling (N,) each
    row's sibling row, for cfg.sibling_negatives."""
    n = len(ids)
    with routed(route(n)):
        image_feat = tasks.image_features(bb, image_embeds)  # (N, D) unit
        text_feat = tasks.text_features(bb, tasks.encode_text(bb, ids, mask))  # (N, D) unit
    cos = image_feat.float() @ text_feat.float().t()  # (N, N) images x texts
    temp = cfg.temp
    positive = positive.to(cos.device)
    out = {"itc": itc_loss(cos / temp, positive)}
    out["mcam"] = mcam_loss(cos, cfg.mcam_tau) if cfg.mcam else cos.new_zeros(())
    if cfg.itm:
        neg_text = hard_negatives(cos / temp, positive, generator)  # per image
        neg_image = hard_negatives(cos.t() / temp, positive.t(), generator)  # per text
        if sibling is not None and cfg.sibling_negatives > 0:
            rows = torch.arange(n, device=cos.device)
            neg_text = sibling_negatives(neg_text, sibling, ~positive[rows, sibling], cfg.sibling_negatives, generator)
            neg_image = sibling_negatives(neg_image, sibling, ~positive[sibling, rows], cfg.sibling_negatives,
                                          generator)
        with routed(route(3 * n)):
            fused = tasks.fuse(bb, torch.cat([ids, ids[neg_text], ids]), torch.cat([mask, mask[neg_text], mask]),
                               torch.cat([image_embeds, image_embeds, image_embeds[neg_image]]))
            logits = bb.itm_head(fused[:, 0, :]).float()  # (3N, 2)
        arange = torch.arange(n, device=cos.device)
        labels = torch.cat([torch.ones(n, device=cos.device), positive[arange, neg_text].float(),
                            positive[neg_image, arange].float()]).long()
        out["itm"] = F.cross_entropy(logits, labels)
        out["itm_acc"] = (logits.argmax(1) == labels).float().mean().detach()
    else:
        out["itm"] = cos.new_zeros(())
    return out


def pretrain_loss(bb, batch: dict, route: Route, cfg: RetrievalLossConfig,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """BLIP's pretraining: ITC + ITM (hard negatives) + LM on one shared image encoding,
    plus a prefix LM when the batch has prefix_ids (SimVLM's objective on BLIP's VQA path).
    batch: pixel_values (N, 3, H, W); input_ids/attention_mask (N, L) the caption alone;
    dec_ids/dec_mask (N, L') prompt + caption; prompt_len; positive (N, N) bool (which
    captions are true of which images: paraphrases and partial captions of other images
    are positives, never ITM negatives); optional prefix_ids/prefix_mask (N, Lp) the
    caption's first words and suffix_ids/suffix_mask (N, Ls) the rest.

    Why the prefix LM: BLIP's VQA decoder cross-attends the fusion encoder's states of the
    question, never the image tokens it saw in captioning pretraining. A real BLIP shares
    the decoder's cross-attention and FFN with the encoder, and its VQA head is fully
    fine-tuned; a frozen backbone served with adapters of a few thousand numbers needs a
    decoder that already reads fused text states, so pretraining teaches it on alt text."""
    with routed(route(len(batch["input_ids"]))):
        image_embeds = tasks.encode_image(bb, batch["pixel_values"])  # (N, 1+P, Hv)
    n = len(batch["input_ids"])
    sibling = (torch.arange(n, device=image_embeds.device) ^ 1) if cfg.sibling_negatives > 0 else None
    assert sibling is None or n % 2 == 0, "sibling negatives need rows in sibling pairs (2i, 2i+1)"
    out = contrastive_and_matching(bb, batch["input_ids"], batch["attention_mask"], image_embeds, batch["positive"],
                                   route, cfg, generator, sibling)
    ids, labels = lm_labels(batch["dec_ids"], batch["dec_mask"], bb.config.text_config.bos_token_id,
                            batch["prompt_len"])
    with routed(route(len(ids))):
        out["lm"] = bb.text_decoder(input_ids=ids, attention_mask=batch["dec_mask"], encoder_hidden_states=image_embeds,
                                    encoder_attention_mask=_ones_mask(image_embeds), labels=labels,
                                    reduction="mean").loss
    out["loss"] = out["itc"] + out["itm"] + out["lm"]
    if "prefix_ids" in batch:
        with routed(route(len(batch["prefix_ids"]))):
            states = tasks.fuse(bb, batch["prefix_ids"], batch["prefix_mask"], image_embeds)  # (N, Lp, H)
            ids, labels = lm_labels(batch["suffix_ids"], batch["suffix_mask"], bb.config.text_config.bos_token_id)
            out["prefix_lm"] = bb.text_decoder(input_ids=ids, attention_mask=batch["suffix_mask"],
                                               encoder_hidden_states=states, encoder_attention_mask=batch["prefix_mask"],
                                               labels=labels, reduction="mean").loss
        out["loss"] = out["loss"] + out["prefix_lm"]
    return out
