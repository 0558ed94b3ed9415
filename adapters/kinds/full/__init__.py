"""Full fine-tuning baseline (training-only); the kind is `model.FullKind`."""
