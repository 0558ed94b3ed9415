"""Per-task latency of the frozen backbone: the small default vs a BLIP-base-size model,
fp32 vs bf16, batch 1 vs 16, side by side in one run.

    .venv/bin/python bench/backbone.py                 # both models
    .venv/bin/python bench/backbone.py --only small    # skip the 224M-parameter model

The small model is `models/blip-shapes` when it exists, else a random model of its
size; BLIP-base is random weights at `BlipConfig()` defaults (ViT-B/16 at 384 px,
BERT-base text, 224M parameters). Latency is the median of --repeats timed calls
after one warm-up call, in ms per call (the whole batch).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import BlipConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters import tasks  # noqa: E402
from adapters.backbone import Backbone, BackboneSettings  # noqa: E402
from tests.tiny import WORDS, random_images  # noqa: E402
from training.tokenizer import blip_text_config_ids, build_processor, build_tokenizer  # noqa: E402

QUESTION = "what colour is the circle ?"


def small_backbone() -> Backbone:
    shipped = ROOT / "models" / "blip-shapes"
    if (shipped / "config.json").is_file():
        return Backbone.from_dirs(shipped)
    processor = build_processor(build_tokenizer(WORDS), 64)
    ids = blip_text_config_ids(processor.tokenizer)
    config = BlipConfig(
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           image_size=64, patch_size=8),
        text_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                         encoder_hidden_size=128, max_position_embeddings=64, **ids),
        image_text_hidden_size=64,
    )
    return Backbone.from_config(config, processor)


def base_backbone() -> Backbone:
    config = BlipConfig()  # BLIP-base: 384 px, ViT-B/16, BERT-base, vocab 30524
    # filler words up to BERT's vocabulary size: every id a random model generates decodes to a
    # word (with only WORDS' ids, its answers decoded to '' and /vqa failed in bench/serve.py)
    words = WORDS + [f"w{i}" for i in range(config.text_config.vocab_size)]
    tokenizer = build_tokenizer(words)
    tokenizer = build_tokenizer(words[:len(words) - (len(tokenizer) - config.text_config.vocab_size)])
    processor = build_processor(tokenizer, config.vision_config.image_size)
    text = config.text_config
    for key, value in blip_text_config_ids(processor.tokenizer).items():
        if key != "vocab_size":  # keep BERT's vocabulary size; our ids are all below it
            setattr(text, key, value)
    return Backbone.from_config(config, processor)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run(name: str, bb: Backbone, dtypes, batches, repeats: int, max_new_tokens: int) -> list[tuple]:
    rows = []
    image_size = bb.config.vision_config.image_size
    for dtype in dtypes:
        model = bb.to_settings(BackboneSettings(dtype=dtype))
        for batch in batches:
            pv = tasks.pixels(model, random_images(batch, size=image_size))
            ids, mask = tasks.tokens(model, [QUESTION] * batch)
            calls = {
                "caption greedy": lambda: tasks.caption_ids(model, pv, max_new_tokens=max_new_tokens,
                                                            min_new_tokens=max_new_tokens),
                "caption beam3": lambda: tasks.caption_ids(model, pv, num_beams=3, max_new_tokens=max_new_tokens,
                                                           min_new_tokens=max_new_tokens),
                "vqa": lambda: tasks.vqa_ids(model, pv, ids, mask, max_new_tokens=5, min_new_tokens=5),
                "itc image": lambda: tasks.itc_image(model, pv),
                "itc text": lambda: tasks.itc_text(model, ids, mask),
                "itm": lambda: tasks.itm_logits(model, pv, ids, mask),
            }
            with torch.inference_mode():
                for task, fn in calls.items():
                    ms = timed(fn, repeats)
                    rows.append((name, dtype, batch, task, ms))
                    print(f"{name:>6} {dtype:>5} b={batch:<3} {task:<15} {ms:10.1f} ms  {ms / batch:9.1f} ms/item",
                          flush=True)
    bb.to_settings(BackboneSettings(dtype="fp32"))
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["small", "base"], default=None, help="run one model only")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (small model)")
    parser.add_argument("--base-repeats", type=int, default=1, help="timed calls per cell (BLIP-base)")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="caption length generated (forced)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads; caption forced to {args.max_new_tokens} new tokens")
    rows = []
    if args.only in (None, "small"):
        rows += run("small", small_backbone(), ["fp32", "bf16"], [1, 16], args.repeats, args.max_new_tokens)
    if args.only in (None, "base"):
        rows += run("base", base_backbone(), ["fp32", "bf16"], [1, 16], args.base_repeats, args.max_new_tokens)

    print("\nratios (same run): bf16/fp32 latency, and per-item cost batch16/batch1")
    cell = {(m, d, b, t): ms for m, d, b, t, ms in rows}
    for model, task in dict.fromkeys((m, t) for m, _, _, t, _ in rows):
        fp32_1, bf16_1, fp32_16 = (cell[(model, d, b, task)] for d, b in [("fp32", 1), ("bf16", 1), ("fp32", 16)])
        print(f"{model:>6} {task:<15} bf16/fp32 (b=1) {bf16_1 / fp32_1:5.2f}   "
              f"fp32 per-item b16/b1 {fp32_16 / 16 / fp32_1:5.2f}")

if __name__ == "__main__":
    main(sys.argv[1:])
