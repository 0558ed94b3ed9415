"""Pretrain the small default BLIP backbone from scratch on a stream of the shapes world.

    python -m training.shapes.pretrain --out models/blip-shapes --steps 4000
    python -m training.shapes.pretrain --out models/blip-shapes --steps 4000 --resume   # after a stop
    python -m training.shapes.pretrain --out /tmp/bb-next --init models/blip-shapes --steps 3000  # continue
    python -m training.shapes.pretrain --out /tmp/bb-clips --init models/blip-shapes --steps 3000 --clip-share 0.25

Every BLIP part trains with BLIP's three objectives (training.losses.pretrain_loss:
ITC, ITM with hard negatives, LM) through training.loop, the same loop, schedule and
checkpointing that fit adapters. The data is a deterministic stream: step s sees the
sibling pairs `training.shapes.world.scene_pair(seed, pretraining pool, train, i)` for
its indices i, each with a fresh alt-text caption, so no image repeats and a resumed run
sees exactly the batches an uninterrupted one would. Siblings differ in one attribute
and sit in the same batch: every batch carries hard negatives (for ITC and ITM) that
only grounding can tell apart, and `positive[i, j]` = "caption j is true of image i"
(training.shapes.language.holds) keeps paraphrases and partial captions from becoming
false negatives.

Writes a *backbone directory* to --out (config.json, model.safetensors, processor files)
and pretrain.json (arguments, wall time, last losses, and the probe of
training.shapes.probe on validation pairs); checkpoints go to <out>.ckpt/ and a JSONL
log to <out>.ckpt/log.jsonl. With --init, pretraining continues from a backbone directory
on the stream's next pairs (never ones the init saw), and pretrain.json lists every stage
with its flags and wall time.

Clips (--clip-share > 0): that share of steps are batches of sibling clip pairs with alt text
(`training.shapes.clip_world.AltTextClips`, pixels (N, F, 3, H, W)), which pretrain_loss runs
as BLIP's video transfer (frames through the ViT, their tokens concatenated for ITM and the
LMs, the mean [CLS] for ITC). Step k is a clip step when floor((k+1) share) > floor(k share),
and its clip pairs are the step's first --clip-batch-pairs indices in the clip stream; a
batch stays a pure function of its step and indices, so --resume is exact. --clip-share 0 is
the image stream exactly as before clips existed.

Vocabulary growth: an --init backbone whose tokenizer lacks words the run's stream speaks
(the motion words, with --clip-share, for one pretrained before clips) gets them appended and
its token matrices grown (training.vocab_growth); pretrain.json's stage lists them as
grown_words. Without clips the vocabulary is the image world's, as before.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on 2 cores shared with other jobs,
# spinning threads made steps 5-10x slower. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import BlipConfig, BlipTextConfig, BlipVisionConfig  # noqa: E402

from adapters.backbone import Backbone  # noqa: E402
from adapters.kinds.full.model import FullFinetune  # noqa: E402
from training import losses  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.loop import LoopConfig, train  # noqa: E402
from training.shapes.language import vocabulary_texts  # noqa: E402
from training.shapes.probe import probe, probe_clips  # noqa: E402
from training.shapes.world import CONTRAST_SHARE, MUTATION_SETS, AltTextPairs  # noqa: E402
from training.tokenizer import blip_text_config_ids, build_processor, build_tokenizer  # noqa: E402
from training.vocab_growth import grow_vocabulary  # noqa: E402


def make_config(ids: dict[str, int], hidden: int, layers: int, heads: int, image_size: int, patch: int,
                max_positions: int = 64) -> BlipConfig:
    """A BlipConfig with equal vision and text widths (VCRA shares one A, B across
    modalities). `ids` comes from training.tokenizer.blip_text_config_ids."""
    vision = BlipVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, image_size=image_size, patch_size=patch,
                              initializer_range=0.02)  # transformers' default 1e-10 suits loading, not training
    text = BlipTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, encoder_hidden_size=hidden,
                          max_position_embeddings=max_positions, **ids)
    return BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=hidden,
                      image_text_hidden_size=hidden)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.shapes.pretrain", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="backbone directory to write (e.g. models/blip-shapes)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the streamed world")
    p.add_argument("--seed", type=int, default=0, help="seed of init, batch order and negative sampling")
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps (the LR schedule spans them)")
    p.add_argument("--mutations", default="weighted", choices=sorted(MUTATION_SETS),
                   help="how sibling pairs differ (training.shapes.world.MUTATION_SETS)")
    p.add_argument("--contrast-share", type=float, default=CONTRAST_SHARE,
                   help="share of captions drawn to be false of the image's sibling")
    p.add_argument("--sincos-positions", type=float, default=None,
                   help="add a 2-D sin-cos grid times this to the ViT position embeddings before training (row norm "
                        "8x this; default 0.5 on a fresh run, 0 with --init, where a value adds that much more): v2's "
                        "learned positions grew to norm 0.6 beside patch features of norm 11.5, and it could not tell "
                        "left from right; at 0.5 a fusion encoder still could not learn 'where is the X' "
                        "(docs/results.md, the position experiment)")
    p.add_argument("--sibling-negatives", type=float, default=0.0,
                   help="share of rows whose ITM negative is their sibling's caption (and sibling image) when that "
                        "is false of them, instead of the ITC-drawn one (0: BLIP's drawing only; 0.5 on stage 3 left "
                        "relation ITM at chance after 300 steps, docs/results.md)")
    p.add_argument("--spatial-cuts", type=float, default=0.0,
                   help="share of image texts with a side or relation phrase whose prefix-LM cut falls just before "
                        "it (training.shapes.language.spatial_cut: the decoder, reading the fused prefix, must say "
                        "where the named object is; 0: cuts uniform over the words, as before)")
    p.add_argument("--batch-pairs", type=int, default=32, help="sibling pairs per step (rows = 2x)")
    p.add_argument("--clip-share", type=float, default=0.0,
                   help="share of steps that are batches of sibling clip pairs (0: images only, the stream as before)")
    p.add_argument("--clip-batch-pairs", type=int, default=8,
                   help="sibling clip pairs per clip step (each clip is --clip-frames images through the ViT)")
    p.add_argument("--clip-frames", type=int, default=8, help="frames per pretraining clip (>= 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=float, default=0.04, help="fraction of steps with linear warmup, then cosine")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (BLIP uses 0.05)")
    p.add_argument("--itc-temp", type=float, default=0.07, help="ITC temperature (fixed)")
    p.add_argument("--hidden", type=int, default=128, help="vision and text width (kept equal for VCRA)")
    p.add_argument("--layers", type=int, default=4, help="layers of the vision encoder, text encoder, decoder each")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--patch", type=int, default=8, help="ViT patch side in pixels")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (world and model)")
    p.add_argument("--max-len", type=int, default=40, help="max text tokens, prompt included")
    p.add_argument("--max-positions", type=int, default=64, help="text position embeddings (longest servable text)")
    p.add_argument("--ckpt-every", type=int, default=100, help="checkpoint every N steps")
    p.add_argument("--init", default=None,
                   help="continue from this backbone directory (size flags are then its own); the stream starts "
                        "after the pairs its pretrain.json says it saw")
    p.add_argument("--resume", action="store_true", help="continue from <out>.ckpt/last.pt if it exists")
    p.add_argument("--stop-after", type=int, default=0,
                   help="leave at this step with the checkpoint kept, as an interruption would (0: run to the end)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=1, help="processes rendering batches ahead of the step")
    p.add_argument("--probe-pairs", type=int, default=300, help="validation pairs the final probe scores (0: none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log only)")
    return p.parse_args(argv)


def build_backbone(args) -> Backbone:
    """A fresh, randomly initialised backbone with the world's tokenizer and processor."""
    tokenizer = build_tokenizer(run_vocabulary(args), model_max_length=args.max_len)
    processor = build_processor(tokenizer, args.image_size)
    config = make_config(blip_text_config_ids(tokenizer), args.hidden, args.layers, args.heads, args.image_size,
                         args.patch, args.max_positions)
    torch.manual_seed(args.seed)
    return Backbone.from_config(config, processor)  # each part with transformers' own init


def run_vocabulary(args) -> list[str]:
    """The words this run's stream speaks: the motion words only with clips, so that default
    flags build (or keep, with --init) exactly the tokenizer they did before clips existed."""
    return vocabulary_texts(motion=args.clip_share > 0)


def sincos_grid(side: int, dim: int) -> torch.Tensor:
    """(side*side, dim) row-major patch grid: [sin, cos] of x, then of y, at dim/4 geometric
    frequencies each; every row has norm sqrt(dim/2)."""
    cells = torch.arange(side, dtype=torch.float32)
    y, x = torch.meshgrid(cells, cells, indexing="ij")
    quarter = dim // 4
    freq = 100.0 ** (-torch.arange(quarter, dtype=torch.float32) / quarter)  # 1 .. ~1/100 radians per patch
    angles = [c.flatten()[:, None] * freq[None] for c in (x, y)]
    return torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)


def add_sincos_positions(bb: Backbone, scale: float) -> None:
    """Position embeddings (1, 1 + patches, hidden) += scale * sincos_grid on the patch rows (not CLS)."""
    pos = bb.vision_model.embeddings.position_embedding
    side = bb.config.vision_config.image_size // bb.config.vision_config.patch_size
    with torch.no_grad():
        pos[0, 1:] += scale * sincos_grid(side, pos.shape[-1])
    bb._fingerprint = None


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    ckpt_dir = out.parent / (out.name + ".ckpt")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if not 0 <= args.clip_share <= 1 or (args.clip_share and not 0 < args.clip_batch_pairs <= args.batch_pairs):
        raise ValueError("need 0 <= --clip-share <= 1 and 0 < --clip-batch-pairs <= --batch-pairs")
    stages = _prior_stages(Path(args.init)) if args.init else []
    fresh = Backbone.from_dirs(args.init) if args.init else build_backbone(args)
    grown = []
    if args.init:
        saved = load_checkpoint(ckpt_dir / "last.pt") if args.resume else None
        if saved is None or "grown_words" in saved["recipe"]:  # a checkpoint from before growth resumes as it was
            grown = grow_vocabulary(fresh, run_vocabulary(args))
            if grown:
                print(f"grew the vocabulary by {len(grown)} tokens: {' '.join(grown[:12])} ...", flush=True)
    if args.sincos_positions is None:  # recorded as what this stage did
        args.sincos_positions = 0.0 if args.init else 0.5
    if args.sincos_positions:
        add_sincos_positions(fresh, args.sincos_positions)
    model = FullFinetune(fresh, task="pretrain")  # trains a copy; `fresh` stays the untouched init (asserted)
    n_params = model.trainable_count()
    start = sum(st["pairs"] for st in stages)  # a continued run takes the stream's next pairs
    data = AltTextPairs(args.world_seed, "train", args.steps * args.batch_pairs,
                        fresh.config.vision_config.image_size, start=start, mutations=args.mutations,
                        contrast_share=args.contrast_share, spatial_cuts=args.spatial_cuts)
    if args.clip_share:
        from training.shapes.clip_world import AltTextClips, ClipShare

        clips = AltTextClips(args.world_seed, "train", len(data), fresh.config.vision_config.image_size,
                             args.clip_frames, start=start, contrast_share=args.contrast_share)
        data = ClipShare(data, clips, args.clip_share, args.clip_batch_pairs)
    print(f"{n_params / 1e6:.2f}M parameters, {args.steps} steps x {2 * args.batch_pairs} rows, "
          f"vocab {len(fresh.processor.tokenizer)}", flush=True)
    cfg = LoopConfig(task="pretrain", epochs=1, batch_size=args.batch_pairs, lr=args.lr,
                     weight_decay=args.weight_decay, warmup=args.warmup, seed=args.seed, log_every=10,
                     ckpt_every=args.ckpt_every, stop_after=args.stop_after, workers=args.workers,
                     progress=not args.no_progress,
                     retrieval=losses.RetrievalLossConfig(temp=args.itc_temp, sibling_negatives=args.sibling_negatives))
    recipe = {k: v for k, v in vars(args).items() if k not in ("out", "resume", "threads", "probe_pairs",
                                                                 "no_progress", "ckpt_every", "stop_after", "workers",
                                                                 "steps")}  # --resume may re-span the schedule
    if grown:
        recipe["grown_words"] = grown
    result = train(fresh, model, data, cfg, ckpt_path=ckpt_dir / "last.pt", log_path=ckpt_dir / "log.jsonl",
                   resume=args.resume, recipe=recipe)
    if not result["finished"]:
        return {"stopped_at": result["steps"]}
    model.model.save_pretrained(out)  # config.json, model.safetensors (fp32), processor files
    seconds = _logged_seconds(ckpt_dir / "log.jsonl")
    stages.append({"args": vars(args), "pairs": args.steps * args.batch_pairs, "train_seconds": seconds,
                   **({"grown_words": grown} if grown else {})})
    record = {"args": vars(args), "parameters": n_params, "train_seconds_this_run": result["seconds"],
              "train_seconds": seconds, "train_seconds_total": round(sum(st["train_seconds"] for st in stages), 1),
              "stages": stages, "last": _last_record(ckpt_dir / "log.jsonl")}
    if args.probe_pairs:
        record["probe"] = probe(Backbone.from_dirs(out), args.world_seed, "val", args.probe_pairs,
                                sheet=out / "contact_sheet.png")
        if args.clip_share:
            record["probe"]["clips"] = probe_clips(Backbone.from_dirs(out), args.world_seed, "val",
                                                   min(args.probe_pairs, 100), frames=args.clip_frames)
        print(json.dumps(record["probe"], indent=1))
    (out / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _prior_stages(init: Path) -> list[dict]:
    """The pretraining stages that produced backbone directory `init`, oldest first."""
    rec = json.loads((init / "pretrain.json").read_text())
    if "stages" in rec:
        return rec["stages"]
    return [{"args": rec["args"], "pairs": rec["args"]["steps"] * rec["args"]["batch_pairs"],
             "train_seconds": rec["train_seconds"]}]  # written before stages were recorded


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def _last_record(log: Path) -> dict:
    steps = [r for r in _records(log) if "step" in r and "loss" in r]
    return steps[-1] if steps else {}


def _logged_seconds(log: Path) -> float:
    """Wall time over every run of this checkpoint directory (each resume restarts elapsed_s)."""
    total, last = 0.0, 0.0
    for r in _records(log):
        if r.get("event") == "resume":
            total, last = total + last, 0.0
        elif "elapsed_s" in r:
            last = r["elapsed_s"]
    return round(total + last, 1)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main(sys.argv[1:])
    print(f"done in {time.perf_counter() - t0:.0f} s")
