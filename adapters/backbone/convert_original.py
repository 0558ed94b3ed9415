"""Convert an original BLIP checkpoint (salesforce/BLIP layout, e.g. `model_base.pth`,
the backbone of the UniTrans paper) into a unitrans backbone directory. One time.

    python -m adapters.convert_original --checkpoint model_base.pth \
        --tokenizer path/to/bert-base-uncased --out models/blip-base

The checkpoint is read with `torch.load(weights_only=True)`: tensors and plain
containers only, never arbitrary pickled objects. Its layout:

    visual_encoder.{cls_token, pos_embed, patch_embed.proj.*, blocks.N.{norm1, attn.qkv,
                    attn.proj, norm2, mlp.fc1, mlp.fc2}.*, norm.*}
    text_encoder.*  text_decoder.{bert,cls}.*   (BERT names: the same as transformers')
    vision_proj.*  text_proj.*  itm_head.*
    *_m (momentum copies), temp, *_queue, ptr_queue   (pretraining state: dropped)

The BlipConfig is read off the tensor shapes; attention heads are not visible in
shapes, so they default to hidden/64 (BLIP's ViT and BERT) and can be given.
The tokenizer is BLIP's: BERT's vocabulary plus [DEC] (decoder BOS) and [ENC].
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from transformers import BertTokenizerFast, BlipConfig, BlipImageProcessorPil, BlipProcessor

from adapters.backbone.model import Backbone
from adapters.backbone.loading import split_parts
from adapters.errors import BackboneLoadError

# original name -> transformers name, applied in order to visual_encoder.* keys
_VISION_RENAMES = [
    (r"^visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
    (r"^visual_encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"^visual_encoder\.norm\.", "vision_model.post_layernorm."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision_model.encoder.layers.\1.layer_norm1."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision_model.encoder.layers.\1.layer_norm2."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"vision_model.encoder.layers.\1.self_attn.qkv."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision_model.encoder.layers.\1.self_attn.projection."),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\1.mlp."),
]
_DROPPED = re.compile(r"(_m\.|_m$|^temp$|_queue$|\.position_ids$)")


def rename_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original BLIP keys -> unitrans/transformers keys; pretraining-only state dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        head = key.split(".", 1)[0]
        if _DROPPED.search(head) or _DROPPED.search(key):
            continue
        if head == "visual_encoder":
            new = key
            for pattern, repl in _VISION_RENAMES:
                new = re.sub(pattern, repl, new)
            if new == key:
                raise BackboneLoadError(f"unrecognised vision key in original checkpoint: {key}")
            out[new] = tensor
        else:
            out[key] = tensor
    return out


def _count_layers(state, prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def infer_config(state: dict[str, torch.Tensor], vision_heads: int | None, text_heads: int | None) -> BlipConfig:
    """A BlipConfig from the shapes of converted tensors (see module docstring)."""
    pos = state["vision_model.embeddings.position_embedding"]  # (1, 1 + patches, Hv)
    patch = state["vision_model.embeddings.patch_embedding.weight"]  # (Hv, 3, p, p)
    vision_hidden, patch_size = pos.shape[-1], patch.shape[-1]
    image_size = int(round((pos.shape[1] - 1) ** 0.5)) * patch_size
    word = state["text_encoder.embeddings.word_embeddings.weight"]  # (V, Ht)
    text_hidden = word.shape[1]
    return BlipConfig(
        vision_config=dict(
            hidden_size=vision_hidden, image_size=image_size, patch_size=patch_size,
            num_hidden_layers=_count_layers(state, "vision_model.encoder.layers."),
            num_attention_heads=vision_heads or max(1, vision_hidden // 64),
            intermediate_size=state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        ),
        text_config=dict(
            vocab_size=word.shape[0], hidden_size=text_hidden, encoder_hidden_size=vision_hidden,
            num_hidden_layers=_count_layers(state, "text_encoder.encoder.layer."),
            num_attention_heads=text_heads or max(1, text_hidden // 64),
            intermediate_size=state["text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=state["text_encoder.embeddings.position_embeddings.weight"].shape[0],
        ),
        image_text_hidden_size=state["vision_proj.weight"].shape[0],
    )


def blip_tokenizer(tokenizer_dir: Path) -> BertTokenizerFast:
    """BERT's tokenizer plus BLIP's [DEC] (as BOS) and [ENC], added if missing."""
    try:
        tok = BertTokenizerFast.from_pretrained(str(tokenizer_dir), local_files_only=True)
    except Exception as err:  # transformers raises OSError/ValueError variously
        raise BackboneLoadError(f"{tokenizer_dir}: cannot load a BERT tokenizer ({err})") from err
    if tok.convert_tokens_to_ids("[DEC]") == tok.unk_token_id:
        tok.add_special_tokens({"bos_token": "[DEC]"})
    else:
        tok.bos_token = "[DEC]"
    if tok.convert_tokens_to_ids("[ENC]") == tok.unk_token_id:
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def convert(checkpoint: Path, tokenizer_dir: Path, out: Path, vision_heads=None, text_heads=None) -> Backbone:
    try:
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise BackboneLoadError(f"{checkpoint}: no such file") from err
    except Exception as err:  # a non-weights pickle or a corrupt file
        raise BackboneLoadError(f"{checkpoint}: cannot be read as a weights-only checkpoint ({err})") from err
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or "visual_encoder.pos_embed" not in state:
        raise BackboneLoadError(f"{checkpoint}: not an original BLIP checkpoint (no visual_encoder.pos_embed)")
    state = rename_original(state)
    config = infer_config(state, vision_heads, text_heads)
    tok = blip_tokenizer(tokenizer_dir)
    if len(tok) != config.text_config.vocab_size:
        raise BackboneLoadError(f"{tokenizer_dir}: tokenizer has {len(tok)} tokens with [DEC]/[ENC], "
                                f"the checkpoint's embeddings have {config.text_config.vocab_size}")
    ids = tok.convert_tokens_to_ids
    text = config.text_config
    text.pad_token_id, text.bos_token_id = tok.pad_token_id, ids("[DEC]")
    text.sep_token_id = text.eos_token_id = tok.sep_token_id
    image_processor = BlipImageProcessorPil(size={"height": config.vision_config.image_size,
                                                  "width": config.vision_config.image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tok)

    parts = split_parts(state)
    backbone = Backbone(config, processor, parts=tuple(parts))
    for part, tensors in parts.items():
        missing, unexpected = getattr(backbone, part).load_state_dict(tensors, strict=False)
        if part == "text_decoder":  # tied copies the original stores once
            missing = [k for k in missing if not k.startswith("cls.predictions.decoder.")]
        if missing or unexpected:
            raise BackboneLoadError(f"{checkpoint}: {part} does not convert cleanly: missing {missing[:3]}, "
                                    f"unexpected {unexpected[:3]}")
    if "text_decoder" in parts:
        backbone.text_decoder.tie_weights()
    backbone.save_pretrained(out)
    return backbone


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="original BLIP .pth (e.g. model_base.pth)")
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="local directory of the bert-base-uncased tokenizer (vocab.txt or tokenizer.json)")
    parser.add_argument("--out", type=Path, required=True, help="backbone directory to write")
    parser.add_argument("--vision-heads", type=int, default=None, help="ViT attention heads (default hidden/64)")
    parser.add_argument("--text-heads", type=int, default=None, help="BERT attention heads (default hidden/64)")
    args = parser.parse_args(argv)
    try:
        bb = convert(args.checkpoint, args.tokenizer, args.out, args.vision_heads, args.text_heads)
    except BackboneLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (parts {sorted(bb.parts)}, tasks {sorted(bb.tasks)}, fingerprint {bb.fingerprint})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
