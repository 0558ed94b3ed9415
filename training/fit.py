"""Train a task adapter on a frozen backbone: caption, VQA or retrieval.

    python -m training.fit --task vqa --kind vcra-qasn --backbone models/blip-shapes \
        --train world/vqa_train.json --val world/vqa_val.json --image-root world \
        --out models/adapters/vqa.safetensors
    torchrun --nproc_per_node=2 -m training.fit --task caption ...   # DDP (gloo on CPU, NCCL on GPU)
    python -m training.fit ... --resume     # after a crash / kill: continues exactly
    python -m training.fit --task vqa --train msrvtt/qa_train.json --val msrvtt/qa_val.json \
        --image-root msrvtt/videos --num-frames 8 ...     # video: entries with a "video" key

Recipes: caption = BLIP's LM loss, prompt masked; vqa = BLIP's answer LM weighted by
answer frequency; retrieval = ITC + ITM with hard negatives, + MCAM (UniTrans) by
default for vcra-qasn (--mcam / --no-mcam). Only the adapter's parameters train; the
backbone stays frozen (asserted). Writes the adapter (safetensors, recipe and val
metrics in its header), `<out>.ckpt.pt` (checkpoint each epoch) and a JSONL log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (as training.shapes.pretrain does): on 2 shared
# cores spinning made the first steps 10-20x slower. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.distributed as dist

from adapters.runtime.sites import MODALITIES
from training import adapters_io, losses
from training.data import DATASETS, DEFAULT_FRAMES, load_json
from training.evaluate import MAIN_METRIC, evaluate
from training.loop import LoopConfig, train

DEFAULT_LR = {"full": 3e-4, "lora": 3e-3, "vera": 2e-2, "vcra": 2e-2, "vcra-qasn": 2e-2,  # vectors need larger steps
              **{k: 3e-3 for k in ("vl-pet-large", "vl-pet-middle-x", "vl-pet-middle-y", "vl-pet-small")}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.fit", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=sorted(DATASETS), help="task the adapter is trained for")
    p.add_argument("--kind", default="vcra-qasn", choices=adapters_io.KINDS,
                   help="adapter kind; 'full' fine-tunes every backbone weight (baseline)")
    p.add_argument("--backbone", required=True, help="backbone directory (config.json, weights, processor)")
    p.add_argument("--train", required=True, help="training annotations (BLIP/LAVIS JSON of --task)")
    p.add_argument("--val", required=True, help="validation annotations, evaluated after training")
    p.add_argument("--image-root", required=True, help="directory the JSONs' image (or video) paths are relative to")
    p.add_argument("--num-frames", type=int, default=DEFAULT_FRAMES,
                   help="video sets (entries with a 'video' key): frames sampled uniformly per clip")
    p.add_argument("--out", required=True,
                   help="adapter file to write (.safetensors); for --kind full a backbone directory")
    p.add_argument("--rank", type=int, default=16,
                   help="low rank r of the A/B matrices (VCRA, VeRA, LoRA); VL-PET: its modules' bottleneck")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (None: per kind, {DEFAULT_LR})")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training data")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many optimizer steps in all; the LR schedule spans them (0: all epochs)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also log the validation metrics every N steps (JSONL 'val' events: a metric/steps curve)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size per process")
    p.add_argument("--seed", type=int, default=0, help="seed of the adapter init, data order and sampling")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32, or bf16 autocast for the forward (weights and optimizer stay fp32)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out if there is one")
    p.add_argument("--log", default=None, help="JSONL log path (None: <out>.log.jsonl)")
    p.add_argument("--ckpt", default=None, help="checkpoint path (None: <out>.ckpt.pt)")
    p.add_argument("--ckpt-every", type=int, default=0, help="also checkpoint every N steps (0: each epoch only)")
    p.add_argument("--log-every", type=int, default=10, help="steps between JSONL log records")
    p.add_argument("--warmup", type=float, default=0.05, help="fraction of steps with linear LR warmup")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--targets", nargs="+", default=None, choices=MODALITIES, metavar="MODALITY",
                   help=f"modalities the adapter adapts (VCRA, VeRA, LoRA kinds; one or more of {', '.join(MODALITIES)}); "
                        "default: the task's (adapters.kinds.base.TASK_TARGETS). Leaving out 'vision' keeps the "
                        "ViT frozen, so the server shares one vision pass between such adapters")
    p.add_argument("--train-ab", action="store_true", help="VCRA/VeRA: also train the shared A, B matrices")
    p.add_argument("--temporal", action="store_true",
                   help="VCRA/VeRA, vqa and retrieval: add the temporal module on video frame tokens (time codes + "
                        "motion vectors, zero at init; adapters/kinds/vcra/temporal.py), so frame order can matter")
    p.add_argument("--mcam", action=argparse.BooleanOptionalAction, default=None,
                   help="retrieval: add the MCAM loss (None: on for vcra-qasn, off otherwise)")
    p.add_argument("--mcam-tau", type=float, default=0.07, help="MCAM softmax temperature tau (paper eq. 9)")
    p.add_argument("--itc-temp", type=float, default=0.07, help="ITC temperature tau_1 (fixed)")
    p.add_argument("--train-limit", type=int, default=None, help="use only the first N training entries")
    p.add_argument("--val-limit", type=int, default=300, help="evaluate on the first N validation entries")
    p.add_argument("--no-eval", action="store_true", help="skip the validation evaluation after training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, for training or validation (logs only)")
    return p


def _init_distributed() -> tuple[int, int, str]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), device


def recipe_of(args, world: int, lr: float, mcam: bool) -> dict:
    return {"task": args.task, "kind": args.kind, "rank": args.rank, "seed": args.seed, "lr": lr,
            "epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size, "world_size": world, "precision": args.precision,
            "train_limit": args.train_limit, "weight_decay": args.weight_decay, "warmup": args.warmup,
            "mcam": mcam, "mcam_tau": args.mcam_tau, "itc_temp": args.itc_temp, "train_ab": args.train_ab,
            "targets": args.targets, "train": str(args.train), "backbone": str(args.backbone), "num_frames": args.num_frames,
            **({"temporal": True} if args.temporal else {})}


def main(argv: list[str]) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.temporal and (args.kind not in adapters_io.TEMPORAL_KINDS or args.task == "caption"):
        parser.error(f"--temporal needs --kind in {adapters_io.TEMPORAL_KINDS} and --task vqa or retrieval")
    from adapters.backbone import Backbone, BackboneSettings

    rank, world, device = _init_distributed()
    try:
        torch.manual_seed(args.seed)
        lr = args.lr if args.lr is not None else DEFAULT_LR.get(args.kind, 3e-3)  # unlisted kinds: LoRA-like modules
        mcam = args.mcam if args.mcam is not None else (args.kind == "vcra-qasn" and args.task == "retrieval")
        out = Path(args.out)
        bb = Backbone.from_dirs(args.backbone, settings=BackboneSettings(device=device))
        # (name, the parameter object, its value) before any adapter is injected
        before = [(n, p, p.detach().clone()) for n, p in bb.named_parameters()]
        adapter = adapters_io.new_adapter(args.kind, bb, task=args.task, rank=args.rank, seed=args.seed,
                                          train_ab=args.train_ab, targets=args.targets, temporal=args.temporal)
        adapter.to(device)
        ds = DATASETS[args.task](load_json(args.train)[: args.train_limit], args.image_root, args.num_frames)
        cfg = LoopConfig(task=args.task, epochs=args.epochs, batch_size=args.batch_size, lr=lr,
                         weight_decay=args.weight_decay, warmup=args.warmup, precision=args.precision,
                         seed=args.seed, log_every=args.log_every, ckpt_every=args.ckpt_every, max_steps=args.max_steps,
                         progress=not args.no_progress,
                         retrieval=losses.RetrievalLossConfig(temp=args.itc_temp, mcam=mcam, mcam_tau=args.mcam_tau))
        recipe = recipe_of(args, world, lr, mcam)
        log_path = Path(args.log) if args.log else out.with_name(out.name + ".log.jsonl")
        ckpt_path = Path(args.ckpt) if args.ckpt else out.with_name(out.name + ".ckpt.pt")
        if rank == 0:
            out.parent.mkdir(parents=True, exist_ok=True)
        val = DATASETS[args.task](load_json(args.val)[: args.val_limit], args.image_root, args.num_frames)

        def validate() -> dict:
            metrics = evaluate(args.task, *adapters_io.live(bb, adapter), val, progress=not args.no_progress)
            return {"main": metrics[MAIN_METRIC[args.task]], **{k: v for k, v in metrics.items() if k != "example"}}

        result = train(bb, adapter, ds, cfg, ckpt_path=ckpt_path, log_path=log_path, resume=args.resume,
                       recipe=recipe, evaluate_every=args.eval_every, evaluate=None if args.no_eval else validate)
        # the frozen backbone must come out bit-identical (a full fine-tune trains a copy)
        changed = [n for n, p, v in before if not torch.equal(p.detach(), v)]
        assert not changed, f"frozen backbone weights changed during training: {changed[:5]}"
        summary = {"task": args.task, "kind": args.kind, "trainable_params": adapters_io.trainable_count(adapter),
                   "paper_params": adapters_io.paper_count(adapter),
                   **({"temporal_params": adapters_io.temporal_count(adapter)} if args.temporal else {}),
                   "steps": result["steps"], "train_seconds": result["seconds"], "last_loss": result["last_loss"],
                   "resumed_from": result["resumed_from"], "world_size": world}
        if rank == 0:
            if not args.no_eval:  # the loop's last 'val' event: the finished adapter on the validation split
                last = [json.loads(x) for x in log_path.read_text().splitlines() if '"event": "val"' in x][-1]
                summary["val"] = {k: v for k, v in last.items() if k not in ("event", "step", "main")}
                summary["val_main"] = last["main"]
            adapters_io.save(adapter, out, recipe={**recipe, "result": summary})
            with open(log_path, "a") as f:
                f.write(json.dumps({"event": "done", **summary}) + "\n")
            print(json.dumps(summary))
        return summary
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
