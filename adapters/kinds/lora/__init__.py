"""LoRA baseline (config / layer / model, the peft split); the kind is `model.LoraKind`."""
