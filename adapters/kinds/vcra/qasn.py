"""QASN, the query-augmentation side network (paper sec. 3.3.1), on the fusion encoder.

For the text encoder run as the fusion network (text self-attention + cross-attention
to image tokens), with blocks b_0 .. b_{N-1} and block inputs x_F^i:

    h_{i+1}   = h_i + x_F^i w_i              x w_i = Λb_i ⊙ (B (Λa_i ⊙ (A x)))   (n, L, d)
    x_F^{i+1} = b_i(x_F^i, x_V) + f(h_{i+1})   f(h)  = tanh(α_i ⊙ h + β_i)

Choices the paper leaves open, made so the adapted model equals the frozen one at init:
- h_0 = 0 (the side network starts empty and only collects what the blocks see).
- σ = tanh: σ(0) = 0 exactly, so with Λb_i = 0 (init), h stays 0 and f(h) = tanh(0) = 0;
  bounded, so the supplement never outgrows the LayerNorm-ed hidden states.
- w_i reads the VCRA operator (A first, then Λa, B, Λb) with the adapter's shared pair of
  the fusion modules ("enc"), without s; Λa_i (r) init 1, Λb_i (d) init 0.
- α_i, β_i are per block, d-vectors (init 1 and 0), applied per token.
- Only the fusion pass gets it: the unimodal text pass (ITC, no image tokens) skips it.
- The caption decoder's cross-attention stack gets NO side network: the paper defines
  QASN on the fusion branch only, and the decoder is already adapted by VCRA on its
  self- and cross-attention ("decoder", "decoder_cross").

Per-call state: h lives in a ContextVar for the span of one encoder forward (set by
block 0, read and replaced by each block, cleared by the last), never on a module, so
concurrent calls in other threads or tasks each carry their own h.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch

from adapters.kinds.vcra.layer import apply_delta_, fold

_SIDE_STATE: ContextVar = ContextVar("unitrans_qasn_h", default=None)


def side_network_step(routing, vectors, index: int, num_blocks: int, hidden_in: torch.Tensor,
                      out: torch.Tensor) -> torch.Tensor:
    """Block `index` ran: hidden_in = x_F^i (n, L, d), out = b_i(x_F^i, x_V). Returns x_F^{i+1}.
    `vectors` is the call's `bank.VectorRouting` (its bank and pair groups)."""
    n, d = hidden_in.shape[0], hidden_in.shape[-1]
    if index == 0:
        h = None  # h_0 = 0
    else:
        state = _SIDE_STATE.get()
        if state is None or state[0] is not routing or state[1] != index:
            raise RuntimeError(f"QASN state missing at fusion block {index}: blocks must run in order in one call")
        h = state[2]
    q_lam_a, q_lam_b, q_alpha, q_beta = vectors.bank.qasn
    for gi, group in enumerate(vectors.pair_groups):
        if group.qasn_pair is None:
            continue
        rows, sl, single = vectors.group_slots(routing, gi, group, n)
        a, b = group.pairs[group.qasn_pair]

        def make(sl=sl, single=single, b=b, rank=group.rank):
            lam_a = _gather(q_lam_a[:, index], sl)[:, :rank]  # (m, r)
            m = fold(lam_a, b[:d].t(), _gather(q_lam_b[:, index], sl))  # (m, r, d)
            return (m[0] if single else m).to(hidden_in.dtype)

        m = routing.memo(("qasn", gi, index, n, hidden_in.dtype), make)
        xs = hidden_in if rows is None else hidden_in.index_select(0, rows)
        step = apply_delta_(xs, torch.zeros_like(xs), a[:, :d].to(hidden_in.dtype), m)  # x w_i
        if rows is not None:
            step = torch.zeros_like(hidden_in).index_add_(0, rows, step)
        h = step if h is None else h + step
    if h is None:
        h = torch.zeros_like(hidden_in)
    _SIDE_STATE.set((routing, index + 1, h) if index + 1 < num_blocks else None)
    slots = routing.slots_for(n)
    alpha = routing.memo(("qasn_alpha", index, n), lambda: _gather(q_alpha[:, index], slots)[:, None, :])
    beta = routing.memo(("qasn_beta", index, n), lambda: _gather(q_beta[:, index], slots)[:, None, :])
    return out + torch.tanh(alpha.to(h.dtype) * h + beta.to(h.dtype)).to(out.dtype)


def _gather(t: torch.Tensor, sl: torch.Tensor | None) -> torch.Tensor:
    return t[:1] if sl is None else t.index_select(0, sl)
