"""Training checkpoints that make `--resume` continue exactly where a run stopped.

A checkpoint holds everything the next step depends on: the trainable (adapter)
parameters, the optimizer and LR-scheduler states, the torch / numpy / python RNG
states, and the data-order position (epoch, batches done in it, global step). It is
written to a temp file in the same directory and `os.replace`d over the old one, so
a kill at any instant leaves either the previous checkpoint or the new one, never a
torn file. Only rank 0 writes; every rank reads the same file on resume.

    save_checkpoint(path, state)     # state = make_state(...)
    state = load_checkpoint(path)    # None if there is none yet
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from adapters.atomic import atomic_file

# Recipe keys that must match for a resume to be the same run (paths may move).
RESUME_KEYS = ("task", "kind", "rank", "seed", "lr", "epochs", "batch_size", "world_size", "precision",
               "train_limit", "weight_decay", "warmup", "mcam", "mcam_tau", "itc_temp", "train_ab", "targets")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def make_state(*, params: dict[str, torch.Tensor], optimizer, scheduler, epoch: int, step_in_epoch: int,
               global_step: int, recipe: dict) -> dict:
    """`epoch`/`step_in_epoch`: the next batch to run is batch `step_in_epoch` of epoch `epoch`."""
    return {
        "params": {k: v.detach().cpu().clone() for k, v in params.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": global_step,
        "recipe": recipe,
    }


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    with atomic_file(path) as f:
        torch.save(state, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict | None:
    path = Path(path)
    if not path.exists():
        return None
    # weights_only=False: numpy's RNG state is a tuple holding an ndarray; the file is our own
    return torch.load(path, map_location="cpu", weights_only=False)


def check_resumable(saved: dict, recipe: dict) -> None:
    """Refuse to resume a checkpoint made with a different recipe (it would not be the same run)."""
    diff = {k: (saved.get(k), recipe.get(k)) for k in RESUME_KEYS if saved.get(k) != recipe.get(k)}
    if diff:
        raise ValueError(f"checkpoint was made by a different run; differing settings (saved, now): {diff}")
