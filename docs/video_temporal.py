"""Video QA per question type, and on direction questions with the clip played backwards: the
measurement behind docs/results.md "Video: does the adapter need a temporal module?".

    python -m docs.video_temporal --backbone models/blip-shapes --world /tmp/clipworld \
        --adapters none /tmp/m12/vqa-plain.safetensors /tmp/m12/vqa-temporal.safetensors --limit 300

Each adapter ('none' = the frozen backbone) is loaded as the server loads it
(`training.adapters_io.load_for_eval`: an AdapterTable slot) and answers the first --limit
questions of the world's video_qa_val.json through `adapters.predict.answers` (the server's
decoding: 3 beams), as `training.evaluate` does. Direction questions are asked again on the
clip played backwards (frames reversed after uniform sampling): an adapter that sees frame
order should then answer the opposite direction; one that does not answers the same. The
question-only prior is each type's most frequent answer in video_qa_train.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from adapters import predict
from training.data import DATASETS, load_json
from training.metrics import vqa_accuracy

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def answers(bb, route, ds, rows: list[int], reverse: bool, batch_size: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        paths = [ds[i][0] for i in chunk]
        ids = predict.question_ids(bb, [ds[i][1] for i in chunk], 40)
        px = ds._pixels(paths, bb.processor).to(bb.device, bb.dtype)  # (n, F, 3, H, W)
        if reverse:
            px = px.flip(1)
        with torch.inference_mode():
            out += predict.answers(bb, px, ids, routing=route(len(chunk)))
    return out


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m docs.video_temporal", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", required=True, help="backbone directory")
    p.add_argument("--world", required=True, help="world directory with video_qa_{train,val}.json")
    p.add_argument("--adapters", nargs="+", required=True, help="adapter files, or 'none' for the frozen backbone")
    p.add_argument("--limit", type=int, default=300, help="the first N validation questions")
    p.add_argument("--num-frames", type=int, default=8, help="frames sampled per clip")
    p.add_argument("--batch-size", type=int, default=32, help="questions per forward call")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    from adapters.backbone import Backbone
    from training.adapters_io import load_for_eval

    world = Path(args.world)
    entries = load_json(world / "video_qa_val.json")[: args.limit]
    ds = DATASETS["vqa"](entries, str(world), args.num_frames)
    counts: dict[str, Counter] = defaultdict(Counter)
    for e in load_json(world / "video_qa_train.json"):
        counts[e["question_type"]][e["answer"][0]] += 1
    prior = {t: min(c, key=lambda a: (-c[a], a)) for t, c in counts.items()}
    types = [e["question_type"] for e in entries]
    direction = [i for i, t in enumerate(types) if t == "direction"]
    mean = lambda xs: round(float(100 * np.mean(xs)), 1) if xs else None  # noqa: E731
    result = {"n_questions": len(entries), "types": dict(Counter(types)), "question_only": {}, "models": {}}
    for t in sorted(set(types)):
        result["question_only"][t] = mean([vqa_accuracy(prior.get(t, ""), ds[i][2]) for i in range(len(ds))
                                           if types[i] == t])
    bb = Backbone.from_dirs(args.backbone)
    for path in args.adapters:
        t0 = time.perf_counter()
        model, route, n_params, info = load_for_eval(bb, path)
        preds = answers(model, route, ds, list(range(len(ds))), False, args.batch_size)
        accs = [vqa_accuracy(a, ds[i][2]) for i, a in enumerate(preds)]
        back = answers(model, route, ds, direction, True, args.batch_size)
        truth = [ds[i][2][0] for i in direction]
        result["models"][path] = {
            "trainable_params": n_params, "accuracy": mean(accs),
            "by_type": {t: mean([a for a, ty in zip(accs, types) if ty == t]) for t in sorted(set(types))},
            "direction_left_right": mean([accs[i] for i in direction if ds[i][2][0] in ("left", "right")]),
            "direction_up_down": mean([accs[i] for i in direction if ds[i][2][0] in ("up", "down")]),
            # backwards clip: the right answer is the opposite direction; "same" = the forward answer again
            "backwards_opposite": mean([vqa_accuracy(b, [OPPOSITE[t]] * 10) for b, t in zip(back, truth)]),
            "backwards_same_answer": mean([float(b == preds[i]) for b, i in zip(back, direction)]),
            "direction_answers": dict(Counter(preds[i] for i in direction)),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps({path: result["models"][path]}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
