"""The temporal module: an optional part of a VCRA/VeRA adapter that lets video tokens say
*when* (`temporal=True`; off by default, and then an adapter and its file are as before).

Why. BLIP's video transfer (`adapters.backbone.tasks`) runs each frame through the ViT and
concatenates the frames' tokens, (B, F*T, Hv): nothing marks a token's frame, so the fusion
encoder's cross-attention (a weighted sum over tokens) and the ITC mean of the frames' [CLS]
see a clip and the same clip played backwards alike. "Which way does the red circle move?"
is at chance by construction (tests/test_clips.py).

What UniAdapter does (RERV/UniAdapter, models/med.py `BertEncoder`): `temporal_embed`, a
learned time embedding (1, 8, H) (trunc-normal std .02, 8 frames fixed) added to every token
of frame t right before the fusion encoder's cross-attention reads the frame tokens; beside
it an order-blind `video_key_adapter` (a linear bottleneck on those tokens added to every
layer's cross-attention key and value) and `frame_aware_attention` (text-to-frame similarity
re-weights each frame's keys). Only the time embedding sees order.

Ours, on the frame tokens after the ViT, for a video row of F >= 2 frames x (F, T, Hv):

    x'_f = x_f + c(t_f) + μ_back ⊙ (x_f - x_{f-1}) + μ_fwd ⊙ (x_{f+1} - x_f)

- c(t): UniAdapter's time embedding, as K = TEMPORAL_KNOTS codes (K, Hv) at relative times
  (k + 0.5) / K, linearly interpolated at the frame's relative time t_f = (f + 0.5) / F
  (clamped at the ends), so any frame count reads it (F = K: exactly the codes). Added to
  every token of the frame ([CLS] and patches).
- μ_back, μ_fwd (Hv each): a per-channel temporal difference over neighbouring frames of the
  same patch (a depthwise temporal convolution, ST-Adapter style, without its bottleneck),
  with the ends replicated (x_{-1} = x_0, x_F = x_{F-1}): a still clip gets no motion term.
  μ_back != μ_fwd makes "appears here" differ from "leaves here", which a per-frame code
  alone cannot tell apart once cross-attention has summed over tokens and ITC over frames.
- Zero at init (codes and μ = 0): the adapter equals the frozen backbone (a project rule;
  UniAdapter's random init would not), and gradients still reach every entry.
- Images (F = 1) and one-frame videos are never touched: the image path is bit-identical.
- Where it acts: wherever the frame tokens are read after the ViT under the call's routing:
  the fusion encoder (VQA, ITM) and ITC (`tasks.fuse`, `tasks.image_features`). Captioning
  (the decoder reading frame tokens directly) has no video task: config refuses the option
  on caption adapters. The ViT's own pass is untouched (see `VcraKind.touches_vision`).
- Cost: (K + 2) * Hv numbers per adapter; one gather and a few elementwise ops per call.
"""

from __future__ import annotations

import torch

TEMPORAL_KNOTS = 8  # codes c_k; the project's default frame count (BLIP: 8 frames for retrieval)


def knot_weights(num_frames: int, knots: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(F, K) linear interpolation of K knots at relative times (k + 0.5) / K, read at the
    frames' relative times (f + 0.5) / F; rows sum to 1. F = K gives the identity."""
    pos = (torch.arange(num_frames, dtype=torch.float64) + 0.5) * knots / num_frames - 0.5  # in knot units
    pos = pos.clamp(0, knots - 1)
    lo = pos.floor().long().clamp(max=knots - 1)
    hi = (lo + 1).clamp(max=knots - 1)
    frac = pos - lo.double()
    w = torch.zeros(num_frames, knots, dtype=torch.float64)
    rows = torch.arange(num_frames)
    w[rows, lo] += 1 - frac
    w[rows, hi] += frac
    return w.to(device=device, dtype=dtype)


def temporal_delta(frames: torch.Tensor, codes: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """frames (n, F, T, Hv); codes (m, K, Hv) and motion (m, 2, Hv) with m = n (per row) or 1
    (shared) -> the module's delta (n, F, T, Hv). Rows with zero codes and motion get exactly 0."""
    f = frames.shape[1]
    codes, motion = codes.to(frames.dtype), motion.to(frames.dtype)
    w = knot_weights(f, codes.shape[1], frames.device, frames.dtype)  # (F, K)
    time = torch.einsum("fk,mkh->mfh", w, codes)[:, :, None, :]  # (m, F, 1, Hv)
    back = frames - torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # x_f - x_{f-1}, x_{-1} = x_0
    fwd = torch.cat([frames[:, 1:], frames[:, -1:]], dim=1) - frames  # x_{f+1} - x_f, x_F = x_{F-1}
    mu_back, mu_fwd = motion[:, None, None, 0, :], motion[:, None, None, 1, :]  # (m, 1, 1, Hv)
    return time + mu_back * back + mu_fwd * fwd


def apply_temporal(frames: torch.Tensor, codes: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """x' = x + delta, (n, F, T, Hv); F = 1 returns `frames` itself."""
    if frames.shape[1] < 2:
        return frames
    return frames + temporal_delta(frames, codes, motion)
