"""The fit loop: AdamW on the adapter's parameters only, DDP when launched by torchrun,
tqdm progress, JSONL log, atomic checkpoints, exact resume. Driven by training.fit.

Exactness: the data order of epoch e is DistributedSampler's permutation seeded by
(seed, e); a resume skips the batches already done in that epoch. Before every
step the torch, numpy and python RNGs and the hard-negative sampler are reseeded
from (seed, rank, step), so randomness depends on the step, not on history, on
every rank; the checkpoint still stores the RNG states, restored on resume.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from training import adapters_io, losses
from training.checkpoint import check_resumable, load_checkpoint, make_state, save_checkpoint, set_rng_state


@dataclass
class LoopConfig:
    task: str
    epochs: int = 5
    batch_size: int = 32  # per process; the global batch is batch_size x world size
    lr: float = 5e-3
    weight_decay: float = 0.0  # on adapter vectors decay pulls toward 0 = toward the frozen model
    warmup: float = 0.05  # fraction of all steps with linear warmup, then cosine decay to 0
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 (autocast; parameters and optimizer stay fp32)
    seed: int = 0
    log_every: int = 10  # steps between JSONL records
    ckpt_every: int = 0  # also checkpoint every N steps inside an epoch (0: only at epoch ends)
    max_steps: int = 0  # train at most this many steps in all; the schedule spans them (0: every epoch)
    stop_after: int = 0  # checkpoint and return at this global step, as an interruption would (0: never)
    workers: int = 0  # processes that build batches ahead of the step (0: built in this process, in turn)
    progress: bool = True
    retrieval: losses.RetrievalLossConfig = losses.RetrievalLossConfig()


class TaskLoss(nn.Module):
    """Holds the adapter (so DDP sees exactly its parameters) and computes the task
    loss through the backbone. The backbone is kept outside the module tree: it is
    frozen and identical on every rank, so DDP has nothing to sync for it."""

    def __init__(self, bb, adapter: nn.Module, route, cfg: LoopConfig):  # bb: the module the task runs on
        super().__init__()
        self.adapter = adapter
        object.__setattr__(self, "bb", bb)
        object.__setattr__(self, "route", route)
        self.cfg = cfg

    def forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        task = self.cfg.task
        if task == "caption":
            return {"loss": losses.caption_loss(self.bb, batch, self.route)}
        if task == "vqa":
            return {"loss": losses.vqa_loss(self.bb, batch, self.route)}
        if task == "retrieval":
            return losses.retrieval_loss(self.bb, batch, self.route, self.cfg.retrieval, generator)
        if task == "pretrain":  # every backbone weight trains (a FullFinetune of a fresh backbone)
            return losses.pretrain_loss(self.bb, batch, self.route, self.cfg.retrieval, generator)
        raise ValueError(f"unknown task {task!r}")


def lr_lambda(total: int, warmup: float):
    warm = max(1, int(round(warmup * total)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return f


def _seed_step(seed: int, rank: int, step: int, generator: torch.Generator) -> None:
    s = (seed * 1_000_003 + rank * 7_919 + step) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
    generator.manual_seed(s + 1)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _Collate:
    """Picklable collate for DataLoader workers: (global step, item indices) -> (indices, batch).
    A dataset with `collate_step(step, indices, processor)` builds the whole batch itself and
    may pick its kind by step (training.shapes.pretrain --clip-share: image or clip batches)."""

    def __init__(self, dataset, processor):
        self.dataset, self.processor = dataset, processor

    def __call__(self, chunk: tuple[int, list[int]]):
        step, idx = chunk
        if hasattr(self.dataset, "collate_step"):
            return idx, self.dataset.collate_step(step, idx, self.processor)
        return idx, self.dataset.collate([self.dataset[i] for i in idx], self.processor)


def _batches(dataset, processor, order: list[int], batch_size: int, start: int, stop: int, workers: int,
             first_step: int = 0):
    """(indices, batch) for steps start..stop-1 of one epoch's `order`; `first_step` is the
    global step of the epoch's step 0. With workers, a DataLoader builds them in other
    processes, two batches ahead: the same batches, since a batch is a pure function of
    its step and indices."""
    chunks = [(first_step + s, order[s * batch_size:(s + 1) * batch_size]) for s in range(start, stop)]
    collate = _Collate(dataset, processor)
    if workers <= 0:
        return (collate(idx) for idx in chunks)
    loader = torch.utils.data.DataLoader(chunks, batch_size=None, collate_fn=collate, num_workers=workers,
                                         prefetch_factor=2, persistent_workers=False)
    return iter(loader)


def _log_val(log, step: int, adapter: nn.Module, evaluate: Callable[[], dict]) -> None:
    adapter.eval()
    metrics = evaluate()
    adapter.train()
    log.write(json.dumps({"event": "val", "step": step, **metrics}) + "\n")
    log.flush()


def _frozen_check(bb, params: list[nn.Parameter]) -> None:
    """The backbone is frozen: none of its parameters requires grad, and the optimizer
    holds none of them (a full fine-tune trains its own copy, never `bb`)."""
    leaked = [n for n, p in bb.named_parameters() if p.requires_grad and not any(p is q for q in params)]
    assert not leaked, f"backbone parameters would train: {leaked[:5]}"
    backbone_ids = {id(p) for p in bb.parameters()}
    assert not any(id(p) in backbone_ids for p in params), "an optimizer parameter belongs to the frozen backbone"


def train(bb, adapter: nn.Module, dataset, cfg: LoopConfig, *, ckpt_path: Path, log_path: Path | None,
          resume: bool, recipe: dict, evaluate_every: int = 0,
          evaluate: Callable[[], dict] | None = None) -> dict[str, Any]:
    """Train `adapter` (of the frozen backbone `bb`) in place. With `evaluate` (rank 0 only),
    its result is logged as {"event": "val", "step", ...} every `evaluate_every` steps and at
    the end: a metric-against-steps curve from one run.
    Returns {"steps", "seconds", "last_loss", "resumed_from", ...}."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    params = [p for p in adapter.parameters() if p.requires_grad]
    assert params, "the adapter has no trainable parameters"
    _frozen_check(bb, params)
    adapters_io.check_optimizer_params(adapter, params)
    run_on, route = adapters_io.live(bb, adapter)

    model: nn.Module = TaskLoss(run_on, adapter, route, cfg)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} training items cannot fill one batch of {cfg.batch_size} x {world} processes")
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, cfg.warmup))

    epoch, start_step, global_step, resumed_from = 0, 0, 0, None
    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None:
        check_resumable(state["recipe"], recipe)
        with torch.no_grad():
            named = dict(adapter.named_parameters())
            for k, v in state["params"].items():
                named[k].copy_(v)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        resumed_from = global_step

    def checkpoint(next_epoch: int, next_step: int) -> None:
        if rank == 0:
            named = {k: p for k, p in adapter.named_parameters() if p.requires_grad}
            save_checkpoint(ckpt_path, make_state(params=named, optimizer=opt, scheduler=sched, epoch=next_epoch,
                                                  step_in_epoch=next_step, global_step=global_step, recipe=recipe))
        if distributed:
            dist.barrier()

    log = open(log_path, "a") if (log_path is not None and rank == 0) else None
    generator = torch.Generator()
    adapter.train()
    t_start, last_loss = time.perf_counter(), float("nan")
    try:
        if log and resumed_from is not None:
            log.write(json.dumps({"event": "resume", "global_step": global_step}) + "\n")
        while epoch < cfg.epochs and global_step < total:
            sampler.set_epoch(epoch)
            order = list(sampler)
            batches = _batches(dataset, bb.processor, order, cfg.batch_size, start_step, steps_per_epoch, cfg.workers,
                               epoch * steps_per_epoch)
            bar = tqdm(total=steps_per_epoch, initial=start_step, desc=f"{cfg.task} epoch {epoch + 1}/{cfg.epochs}",
                       disable=not (cfg.progress and rank == 0), dynamic_ncols=True)
            t_window, n_window = time.perf_counter(), 0
            interrupted_at = None
            for step in range(start_step, steps_per_epoch):
                if global_step >= total:
                    break
                if cfg.stop_after and global_step >= cfg.stop_after:
                    interrupted_at = step
                    break
                _seed_step(cfg.seed, rank, global_step, generator)
                idx, batch = next(batches)
                batch = _to(batch, bb.device)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                    out = model(batch, generator)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                global_step += 1
                n_window += len(idx) * world
                last_loss = out["loss"].item()
                rate = n_window / max(1e-9, time.perf_counter() - t_window)
                bar.set_postfix(loss=f"{last_loss:.4f}", samples_s=f"{rate:.1f}")
                bar.update(1)
                if log and (global_step % cfg.log_every == 0 or step + 1 == steps_per_epoch or global_step == total):
                    rec = {"step": global_step, "epoch": epoch, **{k: round(v.item(), 6) for k, v in out.items()},
                           "lr": sched.get_last_lr()[0], "samples_per_s": round(rate, 2),
                           "elapsed_s": round(time.perf_counter() - t_start, 2)}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if cfg.ckpt_every and global_step % cfg.ckpt_every == 0 and step + 1 < steps_per_epoch:
                    checkpoint(epoch, step + 1)
                if evaluate and log and evaluate_every and global_step % evaluate_every == 0 and global_step < total:
                    _log_val(log, global_step, adapter, evaluate)
            bar.close()
            if interrupted_at is not None:
                checkpoint(epoch, interrupted_at)  # resume exactly at the step not yet done
                break
            epoch, start_step = epoch + 1, 0
            checkpoint(epoch, 0)
            if log:
                log.write(json.dumps({"event": "epoch_end", "epoch": epoch, "step": global_step}) + "\n")
                log.flush()
        if evaluate and log and global_step >= total:
            _log_val(log, global_step, adapter, evaluate)
    finally:
        if log:
            log.close()
    if distributed:  # DDP averaged every gradient, so the replicas must have stayed identical
        flat = torch.cat([p.detach().flatten() for p in params])
        copies = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(copies, flat)
        assert all(torch.equal(c, copies[0]) for c in copies), "DDP replicas diverged"
    adapter.eval()
    return {"steps": global_step, "seconds": round(time.perf_counter() - t_start, 2), "last_loss": last_loss,
            "resumed_from": resumed_from, "steps_per_epoch": steps_per_epoch, "finished": global_step >= total,
            "config": asdict(cfg)}
