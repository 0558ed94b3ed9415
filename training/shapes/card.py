"""The shipped backbone's model card, written from what its commands recorded.

    python -m training.shapes.card --backbone models/blip-shapes --served docs/served_eval.json \
        --results docs/results.md

Reads `<backbone>/config.json`, `<backbone>/pretrain.json` (written by
training.shapes.pretrain: arguments, wall time, last losses, the sibling-pair probe) and
the JSON of `training.served_eval` (the shipped defaults scored through a running
server on a world seed no training used), and writes `<backbone>/README.md`. Every
number on the card comes from those files; nothing is typed by hand. The served tables
are also what docs/results.md shows (`served_tables`, one renderer for both): with
--results, the block between SERVED_BEGIN and SERVED_END there is rewritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PARTS = ("vision", "text encoder", "decoder")
SERVED_BEGIN, SERVED_END = "<!-- served: written by training.shapes.card -->", "<!-- served: end -->"
QUESTION_TYPES = ("colour", "shape", "count", "exists", "where", "relation")


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def served_tables(served: dict) -> str:
    """Markdown: VQA per question type (shipped adapter, frozen, question-only), captions and
    retrieval (shipped adapter vs frozen), from a training.served_eval JSON."""
    d, f = served["default"], served["frozen"]
    out = [f"World `{served['world']}`, split `{served['split']}`, through `{served['url']}`.", ""]
    if "vqa" in d:
        types = [t for t in QUESTION_TYPES if t in d["vqa"]["by_type"]] + \
            sorted(set(d["vqa"]["by_type"]) - set(QUESTION_TYPES))
        out += ["VQA accuracy (%), " + f"{d['vqa']['n_questions']} questions:", "",
                _row(["", "all", *types]), _row(["---"] * (len(types) + 2)),
                _row(["shipped `vqa` adapter", d["vqa"]["accuracy"], *(d["vqa"]["by_type"][t] for t in types)]),
                _row(["frozen backbone", f["vqa"]["accuracy"], *(f["vqa"]["by_type"].get(t, "") for t in types)]),
                _row(["question-only baseline", d["vqa"]["question_only"],
                      *(d["vqa"]["question_only_by_type"][t] for t in types)]), ""]
    if "caption" in d:
        out += [f"Captions, {d['caption']['n_images']} images (BLEU@4 and CIDEr x100):", "",
                _row(["", "exact match (%)", "BLEU@4", "CIDEr"]), _row(["---"] * 4)]
        out += [_row([name, r["caption"]["exact_match"], r["caption"]["bleu4"], r["caption"]["cider"]])
                for name, r in (("shipped `caption` adapter", d), ("frozen backbone", f))] + [""]
    if "retrieval" in d:
        r0 = d["retrieval"]
        out += [f"Retrieval, {r0['n_images']} images (sibling hard negatives among them) and {r0['n_texts']} texts, "
                f"ITC top-{r0['top_k']} re-ranked by ITM (%):", "",
                _row(["", "text->image R@1", "R@5", "R@10", "image->text R@1", "R@5", "R@10"]), _row(["---"] * 7)]
        out += [_row([name, *(r["retrieval"][f"{d_}_r{k}"] for d_ in ("t2i", "i2t") for k in (1, 5, 10))])
                for name, r in (("shipped `retrieval` adapter", d), ("frozen backbone", f))] + [""]
    return "\n".join(out)


def probe_table(probe: dict) -> str:
    attrs = sorted(probe["by_attribute"])
    out = [_row(["", "all", *attrs]), _row(["---"] * (len(attrs) + 2))]
    for k, name in (("itc", "ITC"), ("itm", "ITM"), ("lm", "LM (alt text)"), ("lm_canonical", "LM (canonical captions)")):
        out.append(_row([name, probe[k], *(probe["by_attribute"][a][k] for a in attrs)]))
    return "\n".join(out)


def _flags(args: dict) -> str:
    keys = ("steps", "hidden", "layers", "heads", "patch", "image_size", "batch_pairs", "lr", "warmup", "mutations",
            "contrast_share", "sincos_positions", "sibling_negatives", "clip_share", "clip_batch_pairs", "clip_frames", "seed", "world_seed")
    return " ".join(f"--{k.replace('_', '-')} {args[k]}" for k in keys if k in args and not (args.get("init") and k in
                    ("hidden", "layers", "heads", "patch", "image_size")) and not (k.startswith("clip_") and
                    k != "clip_share" and not args.get("clip_share")))


def _stage_commands(backbone: Path, stages: list[dict]) -> list[str]:
    """One pretrain command per stage; stage k > 0 starts from stage k-1's directory."""
    outs = [f"/tmp/{backbone.name}-stage{k}" for k in range(len(stages) - 1)] + [str(backbone)]
    return [f".venv/bin/python -m training.shapes.pretrain --out {out}"
            + (f" --init {outs[k - 1]}" if k else "") + f" {_flags(st['args'])}"
            for k, (out, st) in enumerate(zip(outs, stages))]


def card(backbone: Path, served: dict | None) -> str:
    cfg = json.loads((backbone / "config.json").read_text())
    rec = json.loads((backbone / "pretrain.json").read_text())
    a, v, t = rec["args"], cfg["vision_config"], cfg["text_config"]
    size_mb = (backbone / "model.safetensors").stat().st_size / 1e6
    patches = (v["image_size"] // v["patch_size"]) ** 2
    last = rec["last"]
    losses = ", ".join(f"{k} {last[k]:.3f}" for k in ("itc", "itm", "itm_acc", "lm", "prefix_lm") if k in last)
    stages = rec.get("stages") or [{"args": a, "train_seconds": rec["train_seconds"]}]
    total_s = rec.get("train_seconds_total", rec["train_seconds"])
    lines = [
        f"# {backbone.name}: the small default BLIP backbone", "",
        f"A BLIP of transformers' architecture at small size ({rec['parameters'] / 1e6:.2f}M parameters, "
        f"{size_mb:.1f} MB), pretrained from scratch by `training.shapes.pretrain` on the generated shapes "
        "world (`training.shapes`). The server and `Backbone.from_dirs(...)` load it offline. This card is "
        "written by `python -m training.shapes.card` from the files the commands below record; do not edit it "
        "by hand.", "",
        "![greedy captions of 16 validation images](contact_sheet.png)", "",
        "`contact_sheet.png`: 16 validation images of the pretraining stream, the greedy caption after "
        "\"a picture of \" (black) and the alt text the image was drawn with (grey).", "",
        "## Architecture", "",
        _row(["part", "size"]), _row(["---", "---"]),
        _row(["vision (ViT)", f"{v['image_size']} px, patch {v['patch_size']} ({patches} patches + CLS), hidden "
                              f"{v['hidden_size']}, {v['num_hidden_layers']} layers, {v['num_attention_heads']} heads"]),
        _row(["text encoder (fusion, with cross-attention)", f"hidden {t['hidden_size']}, {t['num_hidden_layers']} "
                                                             f"layers, vocabulary {t['vocab_size']}"]),
        _row(["text decoder", f"hidden {t['hidden_size']}, {t['num_hidden_layers']} layers, tied output embedding"]),
        _row(["ITC projections / ITM head", f"{cfg.get('projection_dim')} / 2"]), "",
        "## Data and recipe", "",
        "A stream of sibling pairs of the world's pretraining pool (`training.shapes.world.AltTextPairs`): "
        "each pair differs in one attribute (colour, shape, count, size or the layout mirrored), each image "
        "has a fresh alt-text caption in the web-like register of `training.shapes.language.alt_text` "
        "(full and partial descriptions, counts as words or digits, sizes, sides, relations in several word "
        "orders, tag lists, yes/no and count checklists). No image repeats. Downstream formats (canonical "
        "captions, short-answer questions) never occur in it.", "",
        "Objectives (`training.losses.pretrain_loss`, all weights trained, through `training.loop`): ITC "
        "(positives = every caption true of the image, decided by `language.holds`), ITM with hard negatives "
        "sampled from the ITC softmax (siblings are in the batch), LM on \"a picture of <alt text>\", and a "
        "prefix LM: the alt text's first words fused with the image by the text encoder, the decoder "
        "continuing from those fused states, the path BLIP's VQA takes.", "",
        f"Stages (each continues the one before with `--init`, on the stream's next pairs; other flags at "
        f"their defaults): " + "; ".join(f"`{_flags(st['args'])}` ({st['train_seconds'] / 60:.1f} min)"
                                         for st in stages) + f". Wall time of the training steps: "
        f"{total_s / 60:.1f} min on 2 CPU cores. Last logged losses (step {last.get('step')}): {losses}.", "",
        "## What it knows: sibling-pair probe", "",
        f"`training.shapes.probe` on {rec['probe']['pairs']} validation pairs: % of pairs where the backbone "
        "scores an image's own caption above its sibling's (chance 50), by the attribute that differs.", "",
        probe_table(rec["probe"]), "",
    ]
    if "position_r2" in rec["probe"]:
        lines += [f"Position after the ViT (`training.shapes.probe.position_r2`): a linear map reads a patch's "
                  f"column and row off its output token with R² = {rec['probe']['position_r2']} (1 = exactly; "
                  "backbone v2's first stage: 0.04, so it could not see a mirrored layout).", ""]
    if served:
        lines += ["## Downstream, through the server, on a world seed no training used", "",
                  "`training.served_eval` against `python -m server` with the shipped defaults "
                  "(`models/adapters/{caption,vqa,retrieval}.safetensors`) and with `adapter: none` (frozen).", "",
                  served_tables(served), ""]
    lines += ["## Reproduce", "", "```bash",
              *_stage_commands(backbone, stages),
              f".venv/bin/python -m training.shapes.card --backbone {backbone} --served docs/served_eval.json",
              "```", "",
              "An interrupted run continues with the same command plus `--resume` (checkpoints in "
              f"`{backbone}.ckpt/`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m training.shapes.card", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="models/blip-shapes", help="backbone directory with pretrain.json")
    p.add_argument("--served", default=None, help="training.served_eval JSON of the shipped defaults")
    p.add_argument("--results", default=None, help="also rewrite the served block of this markdown file "
                                                   "(between its SERVED_BEGIN and SERVED_END markers)")
    args = p.parse_args(argv)
    backbone = Path(args.backbone)
    served = json.loads(Path(args.served).read_text()) if args.served else None
    (backbone / "README.md").write_text(card(backbone, served))
    print(f"wrote {backbone / 'README.md'}")
    if args.results and served:
        path = Path(args.results)
        text = path.read_text()
        if SERVED_BEGIN not in text or SERVED_END not in text:
            raise SystemExit(f"{path} has no served block: put {SERVED_BEGIN} and {SERVED_END} where it goes")
        head, rest = text.split(SERVED_BEGIN, 1)
        path.write_text(head + SERVED_BEGIN + "\n" + served_tables(served) + "\n" + SERVED_END + rest.split(SERVED_END, 1)[1])
        print(f"wrote the served block of {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
