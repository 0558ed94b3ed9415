"""QASN: identity at init, the equations of the paper (checked against an independent
hook-based reimplementation on the frozen twin), fusion pass only, per-call state that
does not leak between calls or threads."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from adapters import create_adapter, routed, tasks
from adapters.kinds.vcra import qasn as qasn_module
from tests.adapter_helpers import backbone_pair, inputs, randomize


@pytest.fixture(scope="module")
def env(config, processor):
    bb, frozen = backbone_pair(config, processor, seed=4)
    adapter = create_adapter("vcra", bb, task="retrieve", rank=4, seed=2, targets=("vision",))  # QASN on (auto)
    randomize(adapter, seed=9)
    with torch.no_grad():  # isolate QASN: no VCRA delta anywhere
        for p in adapter.lam_b.values():
            p.zero_()
    return bb, frozen, adapter


def _reference_fuse(frozen, adapter, ids, mask, image):
    """h_{i+1} = h_i + Λb ⊙ B(Λa ⊙ A x_i);  x_{i+1} = b_i(x_i, x_V) + tanh(α ⊙ h_{i+1} + β)."""
    a, b = adapter.pair.pairs()["enc"]
    d = frozen.hidden_size
    state = {"h": 0}
    handles = []
    for i, block in enumerate(frozen.text_encoder.encoder.layer):
        def hook(module, args, kwargs, out, i=i):
            x = args[0]
            step = F.linear(F.linear(x, a[:, :d]) * adapter.qasn_lam_a[str(i)], b[:d]) * adapter.qasn_lam_b[str(i)]
            state["h"] = state["h"] + step
            return out + torch.tanh(adapter.qasn_alpha[str(i)] * state["h"] + adapter.qasn_beta[str(i)])
        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    try:
        return tasks.fuse(frozen, ids, mask, image)
    finally:
        for h in handles:
            h.remove()


def test_qasn_follows_the_equations_in_the_fusion_pass_only(env):
    bb, frozen, adapter = env
    px, ids, mask = inputs(bb, 3)
    with torch.inference_mode():
        image = tasks.encode_image(frozen, px)
        with routed(adapter.routing()):
            ours = tasks.fuse(bb, ids, mask, image)
            ours_text = tasks.encode_text(bb, ids, mask)
        expected = _reference_fuse(frozen, adapter, ids, mask, image)
        plain = tasks.fuse(frozen, ids, mask, image)
        assert torch.equal(ours_text, tasks.encode_text(frozen, ids, mask))  # unimodal pass: no side network
    assert not torch.allclose(ours, plain, atol=1e-3)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert qasn_module._SIDE_STATE.get() is None  # cleared by the last block


def test_qasn_identity_at_init(config, processor):
    bb, frozen = backbone_pair(config, processor, seed=6)
    adapter = create_adapter("vcra", bb, task="vqa", rank=4, qasn=True)
    px, ids, mask = inputs(bb, 2)
    with torch.inference_mode():
        with routed(adapter.routing()):
            ours = tasks.fuse(bb, ids, mask, tasks.encode_image(bb, px))
        assert torch.equal(ours, tasks.fuse(frozen, ids, mask, tasks.encode_image(frozen, px)))


def test_side_state_is_per_call_across_threads(env):
    """Two threads fuse with different routings at once; each gets its sequential result."""
    bb, frozen, adapter = env
    other = create_adapter("vcra", bb, task="retrieve", rank=4, seed=2, targets=("vision",))
    randomize(other, seed=33)
    px, ids, mask = inputs(bb, 2)
    with torch.inference_mode():
        image = tasks.encode_image(frozen, px)
        expect = {}
        for name, a in (("a", adapter), ("b", other)):
            with routed(a.routing()):
                expect[name] = tasks.fuse(bb, ids, mask, image)
    errors = []

    def work(name, a):
        try:
            with torch.inference_mode():
                for _ in range(15):
                    with routed(a.routing()):
                        got = tasks.fuse(bb, ids, mask, image)
                    if not torch.equal(got, expect[name]):
                        errors.append(name)
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=("a", adapter)), threading.Thread(target=work, args=("b", other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
