"""Pretrain the small default BLIP backbone from scratch on the shapes world.

    python -m training.world --out /tmp/shapes-world --seed 0 --n 12000
    python -m training.pretrain --world /tmp/shapes-world --out models/blip-shapes --seed 0

Trains every BLIP part with ITC + ITM (hard negatives) + LM on the world's
`pretrain_train.json` (see training.pretrain_model for the losses), checkpoints
to `<out>.ckpt/last.pt` every --ckpt-every steps (`--resume` continues from it,
bit-for-bit the same batches), and writes a *backbone directory* to --out:
config.json (BlipConfig), model.safetensors (keys vision_model.*, text_encoder.*,
text_decoder.*, vision_proj.*, text_proj.*, itm_head.*), the BlipProcessor files,
and pretrain.json (arguments, wall time, losses, and the eval of
training.pretrain_eval on the test split unless --no-eval).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on 2 cores shared with other jobs,
# spinning threads made steps 5-10x slower. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from adapters.atomic import atomic_file  # noqa: E402
from adapters.backbone import Backbone  # noqa: E402
from training.pretrain_model import make_config, pretrain_losses  # noqa: E402
from training.tokenizer import blip_text_config_ids, build_processor, build_tokenizer  # noqa: E402
from training.world import PROMPT, load_texts  # noqa: E402


@dataclasses.dataclass
class PretrainData:
    """The pretraining captions, images already through the processor."""

    pixel_values: torch.Tensor  # (N, 3, S, S) float32, normalised by the image processor
    captions: list[str]


def load_split(world: Path, split: str, processor, limit: int | None = None) -> PretrainData:
    entries = json.loads((world / f"pretrain_{split}.json").read_text())[:limit]
    pixels = []
    for start in range(0, len(entries), 256):  # the processor on chunks: bounded memory
        images = [Image.open(world / e["image"]).convert("RGB") for e in entries[start:start + 256]]
        pixels.append(processor.image_processor(images, return_tensors="pt")["pixel_values"])
    return PretrainData(torch.cat(pixels), [e["caption"] for e in entries])


def make_batch(data: PretrainData, rows: torch.Tensor, tokenizer, prompt_len: int, max_len: int) -> dict:
    captions = [data.captions[i] for i in rows.tolist()]
    text = tokenizer(captions, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    dec = tokenizer([PROMPT + c for c in captions], padding="longest", truncation=True, max_length=max_len,
                    return_tensors="pt")
    return {"pixel_values": data.pixel_values[rows], "text_ids": text.input_ids, "text_mask": text.attention_mask,
            "dec_ids": dec.input_ids, "dec_mask": dec.attention_mask, "prompt_len": prompt_len, "keys": captions}


def batch_rows(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Rows of `step`: epoch e is a permutation seeded by (seed, e), so resuming at any
    step replays exactly the batches a run without interruption would see."""
    per_epoch = n // batch_size  # the ragged tail of each epoch is dropped
    epoch, offset = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return torch.from_numpy(perm[offset * batch_size:(offset + 1) * batch_size].copy())


def lr_at(step: int, args) -> float:
    """Linear warmup, then cosine decay to 10% of --lr."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__.split("\n")[0])
    p.add_argument("--world", required=True, help="directory written by python -m training.world")
    p.add_argument("--out", required=True, help="backbone directory to write (e.g. models/blip-shapes)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, batch order and negative sampling")
    p.add_argument("--steps", type=int, default=1800, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=64, help="image-caption pairs per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=150, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (BLIP uses 0.05)")
    p.add_argument("--hidden", type=int, default=128, help="vision and text width (kept equal for VCRA)")
    p.add_argument("--layers", type=int, default=4, help="layers of the vision encoder, text encoder, decoder each")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--patch", type=int, default=8, help="ViT patch side in pixels")
    p.add_argument("--image-size", type=int, default=0, help="model input side; 0 = the world's image size")
    p.add_argument("--max-len", type=int, default=32, help="max text tokens, prompt included")
    p.add_argument("--max-positions", type=int, default=64, help="text position embeddings (longest servable text)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (tests)")
    p.add_argument("--ckpt-every", type=int, default=250, help="checkpoint every N steps")
    p.add_argument("--ckpt-dir", default=None, help="checkpoint directory; default <out>.ckpt")
    p.add_argument("--resume", action="store_true", help="continue from <ckpt-dir>/last.pt if it exists")
    p.add_argument("--stop-after", type=int, default=None,
                   help="leave after this many steps of this run, checkpoint kept (simulates an interruption)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on only the first N test images (tests)")
    p.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation at the end")
    return p.parse_args(argv)


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    world, out = Path(args.world), Path(args.out)
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else out.parent / (out.name + ".ckpt")
    meta = json.loads((world / "world.json").read_text())
    image_size = args.image_size or meta["size"]

    tokenizer = build_tokenizer(load_texts(world), model_max_length=args.max_len)
    processor = build_processor(tokenizer, image_size)
    prompt_len = len(tokenizer(PROMPT).input_ids) - 1  # [CLS] + prompt words, without [SEP]
    config = make_config(blip_text_config_ids(tokenizer), args.hidden, args.layers, args.heads, image_size,
                         args.patch, args.max_positions)
    model = Backbone.from_config(config, processor)  # each part with transformers' own init
    model.requires_grad_(True)  # a Backbone is built frozen, for serving
    log_temp = torch.nn.Parameter(torch.tensor(math.log(0.07)))  # BLIP's init; not part of the backbone
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2] + [log_temp]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)

    data = load_split(world, "train", processor, args.limit)
    if len(data.captions) < args.batch_size:
        raise ValueError(f"{len(data.captions)} training images < --batch-size {args.batch_size}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters, {len(data.captions)} training pairs, vocab {len(tokenizer)}")

    step, elapsed, history = 0, 0.0, []
    last = ckpt_dir / "last.pt"
    if args.resume and last.exists():
        state = torch.load(last, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        log_temp.data.copy_(state["log_temp"])
        generator.set_state(state["generator"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        print(f"resumed from {last} at step {step}")

    def checkpoint() -> None:
        with atomic_file(last) as f:  # never a half-written last.pt
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "log_temp": log_temp.data,
                        "generator": generator.get_state(), "step": step, "elapsed": elapsed, "history": history,
                        "args": vars(args)}, f)

    model.train()
    bar = tqdm(total=args.steps, initial=step, desc="pretrain", dynamic_ncols=True, mininterval=2.0)
    ema: dict[str, float] = {}
    while step < args.steps:
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args)
        rows = batch_rows(step, len(data.captions), args.batch_size, args.seed)
        losses = pretrain_losses(model, log_temp, make_batch(data, rows, tokenizer, prompt_len, args.max_len),
                                 generator)
        loss = losses["itc"] + losses["itm"] + losses["lm"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + [log_temp], 1.0)
        optimizer.step()
        step += 1
        dt = time.perf_counter() - t0
        elapsed += dt
        for k, v in losses.items():
            v = float(v.detach())
            ema[k] = 0.98 * ema.get(k, v) + 0.02 * v
        if step % 50 == 0 or step == args.steps:
            history.append({"step": step, "elapsed_s": round(elapsed, 1), **{k: round(v, 4) for k, v in ema.items()}})
        bar.set_postfix(itc=f"{ema['itc']:.3f}", itm=f"{ema['itm']:.3f}", lm=f"{ema['lm']:.3f}",
                        ips=f"{args.batch_size / dt:.0f}/s")
        bar.update(1)
        if step % args.ckpt_every == 0 or step == args.steps:
            checkpoint()
        if args.stop_after is not None and step >= args.stop_after:
            checkpoint()
            bar.close()
            return {"stopped_at": step}
    bar.close()

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # config.json, model.safetensors (fp32), processor files
    record = {"args": vars(args), "train_seconds": round(elapsed, 1), "parameters": n_params,
              "final_temp": float(log_temp.detach().exp()), "history": history[-1:] if history else []}
    if not args.no_eval:
        from training.pretrain_eval import evaluate  # noqa: PLC0415  (only needed here)
        record["test"] = evaluate(out, world, "test", limit=args.eval_limit, sheet=out / "contact_sheet.png")
        print(json.dumps(record["test"], indent=1))
    (out / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
    (ckpt_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
