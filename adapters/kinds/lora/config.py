"""LoRA baseline configuration: rank-r (A, B) on every targeted q/k/v projection."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.kinds.base import DEFAULT_RANK, DEFAULT_SEED, TASK_TARGETS, TASKS, validate_task_rank_seed
from adapters.runtime.sites import MODALITIES


@dataclass(frozen=True)
class LoraConfig:
    task: str
    rank: int = DEFAULT_RANK
    seed: int = DEFAULT_SEED  # seeds A's init only; a LoRA file always stores A and B
    targets: tuple[str, ...] = ()  # () -> TASK_TARGETS[task]
    alpha: float | None = None  # delta scaling = alpha / rank; None -> alpha = rank (scaling 1)

    def __post_init__(self):
        validate_task_rank_seed(self.task, self.rank, self.seed, TASKS)
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
