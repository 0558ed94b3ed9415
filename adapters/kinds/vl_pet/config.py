"""VL-PET configuration: the granularity of G, where the modules go, their widths.

    granularity   G's shape per token sequence of N tokens, width d   name (paper)
    "large"       N x d   G = 2σ(W_u gelu(W_d x1 + b_d) + b_u)       VL-PET-large
    "middle-x"    N x 1   G = 2σ(w · (x1 + y1) + b)                  VL-PET-middle_X
    "middle-y"    1 x d   G = 1 + g                                  VL-PET-middle_Y
    "small"       1 x 1   G = 2 mean_tokens σ(w · [x1; y1] + b)      VL-PET-small

Targets name the parts that get modules, with the project's modality names:
"vision" (both residual branches of every ViT layer), "text" (self-attention and
feed-forward branches of every text-encoder layer), "cross" (its cross-attention
branch: the fusion with image tokens), and "decoder_cross" (the value projection of
every decoder cross-attention). Default: the parts the task's forward runs through.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.kinds.base import DEFAULT_RANK, DEFAULT_SEED, TASK_TARGETS, TASKS, validate_task_rank_seed

GRANULARITIES = ("large", "middle-x", "middle-y", "small")
ENCODER_PARTS = ("vision", "text", "cross")  # gated encoder modules
DECODER_PARTS = ("decoder_cross",)  # value parallel adapters
PARTS = ENCODER_PARTS + DECODER_PARTS
# the decoder's self-attention gets nothing (the authors adapt only its encoder-attention value)
TASK_PARTS = {task: tuple(m for m in targets if m in PARTS) for task, targets in TASK_TARGETS.items()}


@dataclass(frozen=True)
class VlPetConfig:
    task: str
    granularity: str = "large"
    rank: int = DEFAULT_RANK  # bottleneck of every down/up module (the authors' adapter_down_dim)
    seed: int = DEFAULT_SEED  # seeds the down projections' init (the up projections start at 0)
    targets: tuple[str, ...] = ()  # () -> TASK_PARTS[task]
    gate_rank: int | None = None  # "large" only: bottleneck of G's own low-rank net; None -> rank

    def __post_init__(self):
        validate_task_rank_seed(self.task, self.rank, self.seed, TASKS)
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        targets = tuple(self.targets) or TASK_PARTS[self.task]
        if any(t not in PARTS for t in targets) or len(set(targets)) != len(targets) or not targets:
            raise ValueError(f"VL-PET targets must be distinct parts from {PARTS}, got {targets}")
        object.__setattr__(self, "targets", tuple(m for m in PARTS if m in targets))
        if self.granularity != "large" and self.gate_rank is not None:
            raise ValueError(f"gate_rank is for granularity 'large' only (this is {self.granularity!r})")
        if self.granularity == "large":
            gate_rank = self.rank if self.gate_rank is None else self.gate_rank
            if not (isinstance(gate_rank, int) and gate_rank >= 1):
                raise ValueError(f"gate_rank must be a positive int, got {gate_rank!r}")
            object.__setattr__(self, "gate_rank", gate_rank)

    def options(self) -> dict:
        """Kind options as stored in a file header (the granularity is the kind's name)."""
        return {"targets": list(self.targets), "gate_rank": self.gate_rank}


def sublayer_part(sublayer) -> str:
    """The target an encoder sublayer belongs to: vision, text (attn / ffn) or cross."""
    if sublayer.modality == "vision":
        return "vision"
    return "cross" if sublayer.part == "cross" else "text"
