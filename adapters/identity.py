"""What every adapter kind (VCRA, VeRA, LoRA) says about itself the same way:
validation of the fields every config has, and the identity read off the config."""

from __future__ import annotations


def validate_task_rank_seed(task: str, rank, seed, tasks: tuple[str, ...]) -> None:
    if task not in tasks:
        raise ValueError(f"task must be one of {tasks}, got {task!r}")
    if not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if not (isinstance(seed, int) and 0 <= seed < 2**63):
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")


class ConfigIdentity:
    """Mixin for adapter modules holding a `.config` with task, rank and seed."""

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def rank(self) -> int:
        return self.config.rank

    @property
    def seed(self) -> int:
        return self.config.seed
