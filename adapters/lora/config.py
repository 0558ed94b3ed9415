"""LoRA baseline configuration: rank-r (A, B) on every targeted q/k/v projection."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.sites import MODALITIES
from adapters.vcra.config import DEFAULT_RANK, DEFAULT_SEED, TASK_TARGETS, TASKS


@dataclass(frozen=True)
class LoraConfig:
    task: str
    rank: int = DEFAULT_RANK
    seed: int = DEFAULT_SEED  # seeds A's init only; a LoRA file always stores A and B
    targets: tuple[str, ...] = ()  # () -> TASK_TARGETS[task]
    alpha: float | None = None  # delta scaling = alpha / rank; None -> alpha = rank (scaling 1)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be an int in [0, 2**63), got {self.seed!r}")
        targets = tuple(self.targets) or TASK_TARGETS[self.task]
        if any(t not in MODALITIES for t in targets) or len(set(targets)) != len(targets):
            raise ValueError(f"targets must be distinct modalities from {MODALITIES}, got {targets}")
        object.__setattr__(self, "targets", tuple(m for m in MODALITIES if m in targets))
        if self.alpha is None:
            object.__setattr__(self, "alpha", float(self.rank))
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def options(self) -> dict:
        return {"targets": list(self.targets), "alpha": self.alpha}
