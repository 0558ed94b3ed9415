"""Trainable-parameter counts on the BLIP-base config (BlipConfig() defaults: d = 768,
12 layers everywhere) against the paper's formula Θ = 2·d·r + N_tuned·(d + r).

Adjustments, as documented in adapters/kinds/vcra/config.py:
- key and value share one vector pair, so an attention module contributes 2 tuned
  "layers" (q and kv): N_tuned = 2 x (attention modules of the targeted modalities);
- the learnable scalar s adds 1;
- the decoder has its own (A, B) pair (paper 4.3.1), so 2·d·r counts once per pair;
- QASN adds, per fusion block, Λa (r) + Λb, α, β (3·d);
- with train_ab=False the pairs are frozen and 2·d·r per pair drops out.
The backbone is built on the meta device (no weights), so this takes a second.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BlipConfig

from adapters import create_adapter
from adapters.backbone import Backbone

D, LAYERS = 768, 12


@pytest.fixture(scope="module")
def base(processor):
    with torch.device("meta"):
        bb = Backbone.from_config(BlipConfig(), processor)
    bb._fingerprint = "meta-blip-base"  # no weights to hash on the meta device
    assert bb.hidden_size == D and bb.config.vision_config.hidden_size == D
    return bb


def _count(adapter) -> int:
    return sum(p.numel() for p in adapter.parameters())


@pytest.mark.parametrize("rank", [1, 8, 64])
def test_vcra_retrieval_matches_paper_formula(base, rank):
    """vision + text + cross: one shared pair, N_tuned = 3 modalities x 12 blocks x (q, kv)."""
    n_tuned = 3 * LAYERS * 2
    adapter = create_adapter("vcra", base, task="retrieve", rank=rank, seed=0, train_ab=True, qasn=False)
    assert _count(adapter) == adapter.trainable_count() == 2 * D * rank + n_tuned * (D + rank) + 1
    frozen = create_adapter("vcra", base, task="retrieve", rank=rank, seed=0, qasn=False)
    assert _count(frozen) == n_tuned * (D + rank) + 1


def test_vcra_vqa_with_decoder_pair_and_qasn(base):
    rank = 8
    n_tuned = 5 * LAYERS * 2  # + decoder self and decoder cross
    qasn = LAYERS * (rank + 3 * D)
    adapter = create_adapter("vcra", base, task="vqa", rank=rank, seed=0, train_ab=True)
    assert adapter.config.qasn
    assert _count(adapter) == 2 * (2 * D * rank) + n_tuned * (D + rank) + 1 + qasn
    assert _count(create_adapter("vcra", base, task="vqa", rank=rank)) == n_tuned * (D + rank) + 1 + qasn


def test_vera_has_one_pair_per_modality(base):
    rank = 8
    adapter = create_adapter("vera", base, task="retrieve", rank=rank, train_ab=True, qasn=False)
    assert _count(adapter) == 3 * (2 * D * rank) + 3 * LAYERS * 2 * (D + rank) + 1


@pytest.mark.parametrize("rank", [1, 8])
def test_lora_matches_its_formula_and_dwarfs_vcra(base, rank):
    """LoRA: r·(in + out) per adapted Linear: 2·d·r on each text/cross q, k, v (2 x 12 x 3
    of them); the fused vision qkv (3d x d) is one Linear: r·(d + 3d) = 4·d·r (peft's
    way; three separate ones would be 6·d·r)."""
    lora = create_adapter("lora", base, task="retrieve", rank=rank)
    assert _count(lora) == (2 * LAYERS * 3) * 2 * D * rank + LAYERS * 4 * D * rank
    vcra = create_adapter("vcra", base, task="retrieve", rank=rank, train_ab=True, qasn=False)
    assert _count(vcra) < _count(lora)
