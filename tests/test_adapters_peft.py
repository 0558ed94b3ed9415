"""Against a peer: VCRA restricted to one modality (the text encoder's self-attention
q/k/v), with a frozen pair and given vectors, equals peft's VeRA on the same layers
once the same tensors are copied in:

    peft:  base(x) + λb ⊙ B (λd ⊙ A x)        ours:  base(x) + s · Λb ⊙ B (Λa ⊙ A x)
    so     vera_A = A, vera_B = B, λd = Λa, λb = s · Λb (key and value both get the kv pair).

Both slice the shared pair the same way (A[:, :in], B[:out]). The fused vision qkv has
no peft counterpart (peft wraps whole Linears), hence the text encoder.
"""

from __future__ import annotations

import copy

import torch
from peft import VeraConfig, get_peft_model

from adapters import create_adapter, routed, tasks
from tests.adapter_helpers import backbone_pair, inputs, randomize

RANK = 4


def test_vcra_text_equals_peft_vera(config, processor):
    bb, frozen = backbone_pair(config, processor, seed=11)
    adapter = create_adapter("vcra", bb, task="retrieve", rank=RANK, seed=5, targets=("text",), qasn=False)
    randomize(adapter, seed=2)
    assert set(adapter.pair.names) == {"enc"} and all(k.startswith("text_") for k in adapter.lam_a)

    peer = get_peft_model(copy.deepcopy(frozen.text_encoder), VeraConfig(
        r=RANK, target_modules=r".*\.attention\.self\.(query|key|value)", projection_prng_key=0,
        vera_dropout=0.0, save_projection=True))
    vera = peer.base_model
    wrapped = [n for n, m in peer.named_modules() if hasattr(m, "vera_lambda_b")]
    assert len(wrapped) == 3 * len(frozen.text_encoder.encoder.layer)
    a, b = adapter.pair.pairs()["enc"]
    with torch.no_grad():
        assert vera.vera_A["default"].shape == a.shape and vera.vera_B["default"].shape == b.shape
        vera.vera_A["default"].copy_(a)
        vera.vera_B["default"].copy_(b)
        for name in wrapped:
            module = peer.get_submodule(name)
            layer, proj = int(name.split(".layer.")[1].split(".")[0]), name.rsplit(".", 1)[1]
            group = f"text_{layer}_{'q' if proj == 'query' else 'kv'}"
            module.vera_lambda_d["default"].copy_(adapter.lam_a[group])
            module.vera_lambda_b["default"].copy_(adapter.scale * adapter.lam_b[group])

    px, ids, mask = inputs(bb, 3)
    with torch.inference_mode():
        with routed(adapter.routing()):
            ours_text = tasks.encode_text(bb, ids, mask)
            image = tasks.encode_image(bb, px)  # vision not targeted: frozen image tokens
            ours_fused = tasks.fuse(bb, ids, mask, image)
        peer_text = peer(input_ids=ids, attention_mask=mask).last_hidden_state
        peer_fused = peer(input_ids=ids, attention_mask=mask, encoder_hidden_states=image,
                          encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long)).last_hidden_state
        frozen_text = tasks.encode_text(frozen, ids, mask)
    assert not torch.allclose(ours_text, frozen_text, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(ours_text, peer_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_fused, peer_fused, atol=1e-5, rtol=1e-5)
