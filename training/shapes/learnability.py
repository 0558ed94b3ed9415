"""Can a fine-tune learn one question type (e.g. "where is the X") from a backbone, given a
direct classifier on the fused [CLS]? The experiment behind the stage-3 position grid and the
relation stages (docs/results.md, "Why `where` and `relation` stay at chance").

    python -m training.shapes.learnability --backbone models/blip-shapes --world /tmp/w0 \
        --extra-sincos 0 2 --steps 1000
    python -m training.shapes.learnability --backbone models/blip-shapes --world /tmp/w0 \
        --question-type relation --extra-sincos 0 --freeze-vit --steps 600

"where" in this world is relational: a group's region (left/right/top/bottom half) is only
determined against the other group (a corner object can be in either), so it needs the same
two-object position comparison as the relation questions ("is the red circle left of the blue
square ?", yes/no), which also need the words' order bound to the objects. For each
--extra-sincos value s, a copy of the backbone gets s x the 2-D sin-cos grid added to its ViT
position embeddings (training.shapes.pretrain.add_sincos_positions; 0 = as shipped), then its
ViT (unless --freeze-vit) and fusion encoder are fully fine-tuned with a linear head on the
fused [CLS] to classify the majority answer of the world's --question-type training questions
(one class per answer seen). Printed: held-out accuracy every --eval-every steps on --test
questions kept out of training. Chance for "where" is 25% (the layout axis alone gives 50%),
for "relation" 50%.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from adapters.backbone import Backbone, tasks
from training.shapes.pretrain import add_sincos_positions


def run(args, extra: float, train: list[dict], test: list[dict], images: dict) -> list[tuple[int, float]]:
    labels = sorted({_answer(q) for q in train + test})  # e.g. bottom, left, right, top; no, yes
    torch.manual_seed(args.seed)
    if args.checkpoint:
        from training.shapes.probe import from_checkpoint

        bb = from_checkpoint(args.backbone, args.checkpoint)
    else:
        bb = Backbone.from_dirs(args.backbone)
    if extra:
        add_sincos_positions(bb, extra)
    head = torch.nn.Linear(bb.config.text_config.hidden_size, len(labels))
    if args.redraw_answers:  # the decoder's (tied) rows of the answer words drawn afresh: do alike rows block it?
        rows = bb.text_decoder.cls.predictions.decoder.weight
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for a in labels:
                for t in bb.processor.tokenizer(a).input_ids[1:-1]:  # [CLS] word(s) [SEP]
                    rows[t] = torch.randn(rows.shape[1], generator=gen) * float(rows.norm(dim=1).mean()) / rows.shape[1] ** 0.5
    if args.head == "decoder":  # BLIP's VQA path: the decoder reads the fused question, no new parameters
        params = [*bb.text_encoder.parameters(), *bb.text_decoder.parameters()]
    else:
        params = [*bb.text_encoder.parameters(), *head.parameters()]
    params += [] if args.freeze_vit else list(bb.vision_model.parameters())
    for p in bb.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, args.lr)

    def logits(batch: list[dict]) -> torch.Tensor:  # (B, classes): [CLS] head, or log p(answer | question, image)
        px = tasks.pixels(bb, [images[q["image"]] for q in batch])
        ids, mask = tasks.tokens(bb, [q["question"] for q in batch])
        states = tasks.fuse(bb, ids, mask, tasks.encode_image(bb, px))  # (B, Lq, H)
        if args.head == "cls":
            return head(states[:, 0])
        reads = mask if args.decoder_reads == "all" else torch.zeros_like(mask).index_fill_(1, torch.tensor([0]), 1)
        return torch.stack([tasks.answer_log_likelihood(bb, states, [a] * len(batch), reads) for a in labels], 1)

    def accuracy() -> float:
        bb.eval()
        with torch.no_grad():
            right = sum(int((logits(test[i:i + 100]).argmax(-1) == _labels(test[i:i + 100], labels)).sum())
                        for i in range(0, len(test), 100))
        bb.train()
        return 100.0 * right / len(test)

    rng, curve = random.Random(args.seed), []
    bb.train()
    for step in range(1, args.steps + 1):
        batch = rng.sample(train, args.batch_size)
        scores, truth = logits(batch), _labels(batch, labels)
        if args.head == "cls":
            loss = torch.nn.functional.cross_entropy(scores, truth)
        else:  # BLIP's VQA loss: -log p(answer tokens) over the whole vocabulary
            loss = -scores.gather(1, truth[:, None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0:
            curve.append((step, accuracy()))
            print(f"{args.question_type}  {args.head}  extra sin-cos {extra:g}  step {step:5d}  loss {loss.item():.3f}  held-out acc {curve[-1][1]:.1f}%",
                  flush=True)
    return curve


def _answer(q: dict) -> str:
    """The majority of the question's VQAv2-style answers (counts mix "2" and "two")."""
    return max(set(q["answer"]), key=q["answer"].count)


def _labels(batch: list[dict], labels: list[str]) -> torch.Tensor:
    return torch.tensor([labels.index(_answer(q)) for q in batch])


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.shapes.learnability", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", required=True, help="backbone directory")
    p.add_argument("--checkpoint", default=None, help="a pretraining run's checkpoint (probe --checkpoint's meaning)")
    p.add_argument("--freeze-vit", action="store_true", help="train the fusion encoder and head only")
    p.add_argument("--decoder-reads", default="all", choices=["all", "cls"],
                   help="with --head decoder: the decoder cross-attends every question state (BLIP), or only the "
                        "fused [CLS] (what the linear head reads)")
    p.add_argument("--redraw-answers", action="store_true",
                   help="with --head decoder: draw the decoder's embedding rows of the answer words afresh first")
    p.add_argument("--head", default="cls", choices=["cls", "decoder"],
                   help="cls: a linear head on the fused [CLS]; decoder: BLIP's answer decoder reading the fused "
                        "question (trained with it, BLIP's VQA loss; scored by ranking the answers)")
    p.add_argument("--world", required=True, help="world directory with vqa_train.json (training.shapes.world)")
    p.add_argument("--question-type", default="where", help="which questions (the world's question_type: where, "
                   "relation, count, colour, shape, exists)")
    p.add_argument("--extra-sincos", type=float, nargs="+", default=[0.0, 2.0], help="grid scales to compare")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per scale")
    p.add_argument("--eval-every", type=int, default=100, help="held-out accuracy every N steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (ViT, fusion encoder, head)")
    p.add_argument("--train", type=int, default=8000, help="training questions (first N after the held-out ones)")
    p.add_argument("--test", type=int, default=400, help="held-out questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the curves here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    qs = [q for q in json.loads(Path(args.world, "vqa_train.json").read_text()) if q["question_type"] == args.question_type]
    random.Random(0).shuffle(qs)
    test, train = qs[:args.test], qs[args.test:args.test + args.train]
    images = {q["image"]: Image.open(Path(args.world, q["image"])).convert("RGB") for q in test + train}
    t0 = time.perf_counter()
    out = {"args": vars(args), "labels": sorted({_answer(q) for q in train + test}), "curves": {f"{s:g}": run(args, s, train, test, images) for s in args.extra_sincos}}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
