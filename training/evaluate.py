"""Evaluate a task adapter (or the bare frozen backbone) on an annotation file.

    python -m training.evaluate --task caption --backbone models/blip-shapes \
        --adapter models/adapters/caption.safetensors --data world/caption_test.json --image-root world
    python -m training.evaluate --task retrieval --backbone models/blip-shapes --adapter none \
        --data world/retrieval_test.json --image-root world --k-test 16
    python -m training.evaluate --task vqa --backbone models/blip-shapes --adapter vqa.safetensors \
        --data msrvtt/qa_test.json --image-root msrvtt/videos --num-frames 8   # video: a "video" key

Video sets (MSRVTT-QA, DiDeMo, MSRVTT retrieval in LAVIS's JSON) are recognised by their
"video" key: each clip is --num-frames uniformly sampled frames, run as the server runs a
video request. VQA accuracy on a single-answer set (MSRVTT-QA) is exact match.

Prints one JSON object: the task's metrics (caption BLEU@4 and CIDEr, x100; VQA accuracy;
retrieval R@1/5/10 both ways, ITC top-k re-ranked by ITM as BLIP does) and the
adapter's trainable-parameter count. Progress bars (tqdm, on stderr) count the rows
of each phase as they are predicted; --no-progress turns them off.

Evaluation is serving: predictions come from `adapters.predict`, the functions the
server's batches call (same decoding defaults: captions greedy <= 30 tokens, VQA
3 beams <= 10 tokens >= 1; questions tokenized alone, padded and masked per batch, so
an answer does not depend on --batch-size; the same retrieval re-rank score), with
the adapter chosen per call by routing. `predict_captions`, `predict_answers` and
`retrieval_scores` return the predictions themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

# Idle OpenMP threads sleep instead of spinning (as training.shapes.pretrain does): on 2 shared
# cores spinning made the first steps 10-20x slower. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from tqdm import tqdm

from adapters import predict, tasks
from adapters.runtime.routing import routed
from training.data import DATASETS, DEFAULT_FRAMES, MAX_TEXT_LEN, CaptionDataset, RetrievalDataset, VQADataset, load_json, tokens
from training.metrics import caption_scores, recall_at_k, vqa_accuracy

Route = Callable[[int], Any]  # batch size -> the routing for a call of that many rows


def no_adapter(n: int) -> None:
    return None


def _autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return nullcontext()


def _chunks(n: int, size: int, progress: str | None = None):
    """Slices of `size` rows over n rows; with `progress` (a label), a tqdm bar on stderr
    counts the rows as they are done."""
    with tqdm(total=n, desc=progress, unit="row", disable=progress is None, dynamic_ncols=True) as bar:
        for start in range(0, n, size):
            yield slice(start, min(n, start + size))
            bar.update(min(n, start + size) - start)


@torch.inference_mode()
def predict_captions(bb, ds: CaptionDataset, route: Route = no_adapter, batch_size: int = 32,
                     num_beams: int | None = None, max_new_tokens: int | None = None,
                     precision: str = "fp32", progress: bool = False) -> dict[str, str]:
    """{image path: caption} for each distinct image, as the server captions it."""
    images, _ = ds.references()
    hyps: dict[str, str] = {}
    for sl in _chunks(len(images), batch_size, "caption: images" if progress else None):
        paths = images[sl]
        with _autocast(precision):
            out = predict.captions(bb, ds._pixels(paths, bb.processor).to(bb.device, bb.dtype), num_beams=num_beams,
                                   max_new_tokens=max_new_tokens, routing=route(len(paths)))
        hyps.update(zip(paths, out))
    return hyps


def evaluate_caption(bb, ds: CaptionDataset, route: Route = no_adapter, batch_size: int = 32,
                     num_beams: int | None = None, max_new_tokens: int | None = None, precision: str = "fp32",
                     progress: bool = False) -> dict:
    images, refs = ds.references()
    hyps = predict_captions(bb, ds, route, batch_size, num_beams, max_new_tokens, precision, progress)
    scores = caption_scores(refs, hyps)
    exact = float(np.mean([hyps[p].lower() in {r.lower() for r in refs[p]} for p in images]) * 100)
    return {"bleu4": scores["bleu4"], "cider": scores["cider"], "exact_match": exact,
            "n_images": len(images), "example": {"image": images[0], "caption": hyps[images[0]]}}


@torch.inference_mode()
def predict_answers(bb, ds: VQADataset, route: Route = no_adapter, batch_size: int = 64,
                    num_beams: int | None = None, max_new_tokens: int | None = None,
                    precision: str = "fp32", progress: bool = False) -> list[str]:
    """One generated answer per question, in dataset order, as the server answers it."""
    preds: list[str] = []
    for sl in _chunks(len(ds), batch_size, "vqa: questions" if progress else None):
        paths, questions, _ = zip(*(ds[i] for i in range(sl.start, sl.stop)))
        ids = predict.question_ids(bb, list(questions), MAX_TEXT_LEN)  # (L_i,) each, unpadded
        with _autocast(precision):
            preds += predict.answers(bb, ds._pixels(list(paths), bb.processor).to(bb.device, bb.dtype), ids,
                                     num_beams=num_beams, max_new_tokens=max_new_tokens, routing=route(len(ids)))
    return preds


def evaluate_vqa(bb, ds: VQADataset, route: Route = no_adapter, batch_size: int = 64, num_beams: int | None = None,
                 max_new_tokens: int | None = None, precision: str = "fp32", progress: bool = False) -> dict:
    preds = predict_answers(bb, ds, route, batch_size, num_beams, max_new_tokens, precision, progress)
    accs = [vqa_accuracy(p, ds[i][2]) for i, p in enumerate(preds)]
    out = {"accuracy": float(np.mean(accs) * 100), "n_questions": len(accs)}
    types = [e.get("question_type") for e in ds.entries]
    if any(t is not None for t in types):  # the world's files say what each question asks (e.g. "direction")
        by_type: dict[str, list[float]] = {}
        for t, a in zip(types, accs):
            by_type.setdefault(t or "other", []).append(a)
        out["by_type"] = {t: {"accuracy": float(np.mean(v) * 100), "n": len(v)} for t, v in sorted(by_type.items())}
    return out


@torch.inference_mode()
def retrieval_scores(bb, ds: RetrievalDataset, route: Route = no_adapter, batch_size: int = 64, k_test: int = 16,
                     precision: str = "fp32", progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BLIP's protocol: ITC cosine over the whole gallery, then for each query its k_test
    best candidates are re-scored with `predict.rerank_score` (ITM logit(match) + ITC
    cosine, what the server's /retrieve ranks by); the rest keep a score below any
    re-scored one. -> (i2t (n_img, n_txt), t2i (n_txt, n_img), ITC cosine (n_img, n_txt))."""
    bb.require("retrieve")
    images, texts, _, _ = ds.gallery()
    embeds, img_feat, txt_feat = [], [], []

    def label(what: str) -> str | None:
        return f"retrieval: {what}" if progress else None

    with _autocast(precision):
        for sl in _chunks(len(images), batch_size, label("images")):
            with routed(route(sl.stop - sl.start)):
                e = tasks.encode_image(bb, ds.pixels(images[sl], bb.processor).to(bb.device, bb.dtype))
                embeds.append(e)
                img_feat.append(tasks.image_features(bb, e).float())
        ids_all, mask_all = tokens(bb.processor, texts)
        for sl in _chunks(len(texts), batch_size, label("texts")):
            ids, mask = ids_all[sl].to(bb.device), mask_all[sl].to(bb.device)
            with routed(route(len(ids))):
                txt_feat.append(tasks.text_features(bb, tasks.encode_text(bb, ids, mask)).float())
        embeds, img_feat, txt_feat = torch.cat(embeds), torch.cat(img_feat), torch.cat(txt_feat)
        sim = img_feat @ txt_feat.t()  # (n_img, n_txt) cosine

        def itm(image_rows: torch.Tensor, text_rows: torch.Tensor, what: str) -> torch.Tensor:
            """ITM logits (n, 2) of the (image, text) pairs given by row indices."""
            out = []
            for sl in _chunks(len(image_rows), batch_size, label(what)):
                i, t = image_rows[sl], text_rows[sl]
                with routed(route(len(i))):
                    fused = tasks.fuse(bb, ids_all[t].to(bb.device), mask_all[t].to(bb.device), embeds[i])
                    out.append(bb.itm_head(fused[:, 0, :]).float())
            return torch.cat(out)

        k_i2t, k_t2i = min(k_test, len(texts)), min(k_test, len(images))
        i2t = torch.full_like(sim, -100.0)
        top = sim.topk(k_i2t, dim=1)  # per image its k best texts
        rows = torch.arange(len(images)).repeat_interleave(k_i2t)
        i2t[rows, top.indices.flatten()] = predict.rerank_score(itm(rows, top.indices.flatten(), "ITM re-rank i->t"),
                                                                      top.values.flatten())
        t2i = torch.full_like(sim.t(), -100.0)
        top = sim.t().topk(k_t2i, dim=1)  # per text its k best images
        rows = torch.arange(len(texts)).repeat_interleave(k_t2i)
        t2i[rows, top.indices.flatten()] = predict.rerank_score(itm(top.indices.flatten(), rows, "ITM re-rank t->i"),
                                                                      top.values.flatten())
    return i2t, t2i, sim


def evaluate_retrieval(bb, ds: RetrievalDataset, route: Route = no_adapter, batch_size: int = 64, k_test: int = 16,
                       precision: str = "fp32", progress: bool = False) -> dict:
    _, _, txt2img, img2txt = ds.gallery()
    i2t, t2i, sim = retrieval_scores(bb, ds, route, batch_size, k_test, precision, progress)
    out = recall_at_k(i2t.numpy(), t2i.numpy(), img2txt, txt2img)
    itc_only = recall_at_k(sim.numpy(), sim.t().numpy(), img2txt, txt2img)
    out["itc_r_mean"] = itc_only["r_mean"]  # before the ITM re-rank, to see what ITM adds
    out.update(n_images=len(img2txt), n_texts=len(txt2img), k_test=k_test)
    return out


MAIN_METRIC = {"caption": "cider", "vqa": "accuracy", "retrieval": "r_mean"}


def evaluate(task: str, bb, route: Route, ds, **kwargs) -> dict:
    """`bb`: the module to run (backbone, or a full fine-tune's copy); `route`: n -> routing."""
    fn = {"caption": evaluate_caption, "vqa": evaluate_vqa, "retrieval": evaluate_retrieval}[task]
    return fn(bb, ds, route, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--task", required=True, choices=sorted(DATASETS), help="which task's metrics to compute")
    p.add_argument("--backbone", required=True, help="backbone directory (config.json, weights, processor)")
    p.add_argument("--adapter", required=True, help="adapter .safetensors file, or 'none' for the frozen backbone")
    p.add_argument("--data", required=True, help="annotation JSON in the BLIP/LAVIS format of --task")
    p.add_argument("--image-root", required=True, help="directory the JSON's image (or video) paths are relative to")
    p.add_argument("--num-frames", type=int, default=DEFAULT_FRAMES,
                   help="video sets (entries with a 'video' key): frames sampled uniformly per clip")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N entries (quick checks)")
    p.add_argument("--batch-size", type=int, default=64, help="images (or questions) per forward call")
    p.add_argument("--num-beams", type=int, default=None,
                   help="beam width (default: the server's, caption 1 = greedy, VQA 3)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generated tokens at most (default: the server's, caption 30, VQA 10)")
    p.add_argument("--k-test", type=int, default=16, help="retrieval: ITC candidates per query re-ranked by ITM")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="fp32, or bf16 autocast")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr (the JSON result only)")
    return p


def main(argv: list[str]) -> dict:
    from adapters.backbone import Backbone
    from training.adapters_io import load_for_eval

    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    bb = Backbone.from_dirs(args.backbone)
    model, route, n_params, info = load_for_eval(bb, args.adapter)
    ds = DATASETS[args.task](load_json(args.data)[: args.limit], args.image_root, args.num_frames)
    kwargs = {"batch_size": args.batch_size, "precision": args.precision, "progress": not args.no_progress}
    if args.task == "retrieval":
        kwargs["k_test"] = args.k_test
    else:
        kwargs.update(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    metrics = evaluate(args.task, model, route, ds, **kwargs)
    result = {"task": args.task, "adapter": args.adapter, **info, "trainable_params": n_params,
              "main_metric": MAIN_METRIC[args.task], **metrics, "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
