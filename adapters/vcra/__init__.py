"""VCRA: vector-based cross-modal random matrix adaptation (config / layer / model)."""

from adapters.vcra.config import DEFAULT_RANK, DEFAULT_SEED, TASK_TARGETS, VcraConfig, VcraLayout
from adapters.vcra.model import VcraAdapter

__all__ = ["DEFAULT_RANK", "DEFAULT_SEED", "TASK_TARGETS", "VcraConfig", "VcraLayout", "VcraAdapter"]
