"""LoRA baseline (config / layer / model, the peft split)."""

from adapters.lora.config import LoraConfig
from adapters.lora.model import LoraAdapter

__all__ = ["LoraConfig", "LoraAdapter"]
