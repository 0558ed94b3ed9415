"""Reading backbone directories from disk, offline, with errors that name the file.

A directory holds `config.json` (a `BlipConfig`), weights (`model.safetensors`,
a sharded `model.safetensors.index.json`, or `pytorch_model.bin` read with
`weights_only=True`) and the processor files of `BlipProcessor.save_pretrained`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import BlipConfig, BlipProcessor

from adapters.backbone.parts import PARTS, TIED_KEYS, BackboneSettings, fingerprint_state_dict
from adapters.errors import BackboneLoadError

log = logging.getLogger(__name__)

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def read_config(directory: Path) -> BlipConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise BackboneLoadError(f"{path}: missing (a backbone directory needs a BlipConfig config.json)")
    try:
        raw = json.loads(path.read_text())
        config = BlipConfig.from_dict(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as err:
        raise BackboneLoadError(f"{path}: not a valid BlipConfig JSON ({err})") from err
    if raw.get("model_type", "blip") != "blip":
        raise BackboneLoadError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'blip'")
    return config


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise BackboneLoadError(f"{path}: corrupt or truncated safetensors file ({err})") from err


def read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a directory, and the file they came from (for messages)."""
    single = directory / "model.safetensors"
    if single.is_file():
        return _load_safetensors(single), single
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as err:
            raise BackboneLoadError(f"{index}: not a valid safetensors index ({err})") from err
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (directory / shard).is_file():
                raise BackboneLoadError(f"{directory / shard}: missing (listed in {index.name})")
            state.update(_load_safetensors(directory / shard))
        return state, index
    pickle_path = directory / "pytorch_model.bin"
    if pickle_path.is_file():
        try:  # weights_only: tensors and plain containers only, never arbitrary objects
            state = torch.load(pickle_path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a bad pickle
            raise BackboneLoadError(f"{pickle_path}: cannot be read as a weights-only checkpoint ({err})") from err
        return state, pickle_path
    raise BackboneLoadError(
        f"{directory}: no weights found (expected model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
    )


def read_processor(directory: Path) -> BlipProcessor:
    if not any((directory / f).is_file() for f in PROCESSOR_FILES):
        raise BackboneLoadError(f"{directory}: missing processor file (one of {', '.join(PROCESSOR_FILES)})")
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        raise BackboneLoadError(f"{directory}: missing tokenizer file (one of {', '.join(TOKENIZER_FILES)})")
    for name in PROCESSOR_FILES + ("tokenizer_config.json", "tokenizer.json"):
        path = directory / name
        if path.is_file():
            try:
                json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise BackboneLoadError(f"{path}: corrupt JSON ({err})") from err
    try:
        return BlipProcessor.from_pretrained(str(directory), local_files_only=True)
    except Exception as err:  # transformers raises OSError/ValueError/KeyError variously
        raise BackboneLoadError(f"{directory}: cannot load the BLIP processor ({err})") from err


def split_parts(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{part: {key without prefix: tensor}} for the parts present in `state`."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        head, _, rest = key.partition(".")
        if head in PARTS:
            parts.setdefault(head, {})[rest] = tensor
    return parts


def _fill_tied(part: str, tensors: dict[str, torch.Tensor]) -> None:
    for tied, source in TIED_KEYS.items():
        tied_part, _, tied_rest = tied.partition(".")
        source_rest = source.partition(".")[2]
        if part == tied_part and tied_rest not in tensors and source_rest in tensors:
            tensors[tied_rest] = tensors[source_rest]


def load_backbone(cls, dirs: list[Path], settings: BackboneSettings):
    if not dirs:
        raise BackboneLoadError("no backbone directory given")
    for directory in dirs:
        if not directory.is_dir():
            raise BackboneLoadError(f"{directory}: not a directory")
    config = read_config(dirs[0])
    processor = read_processor(dirs[0])

    chosen: dict[str, tuple[dict[str, torch.Tensor], Path]] = {}
    for directory in dirs:
        if directory != dirs[0]:
            read_config(directory)  # validate every directory, not only the first
        state, source = read_weights(directory)
        found = split_parts(state)
        if not found:
            raise BackboneLoadError(f"{source}: holds no BLIP parts (keys start with none of {PARTS})")
        for part, tensors in found.items():
            chosen.setdefault(part, (tensors, source))
    if "vision_model" not in chosen:
        raise BackboneLoadError(f"none of {[str(d) for d in dirs]} holds vision_model.* weights")

    backbone = cls(config, processor, parts=tuple(chosen))
    full_state: dict[str, torch.Tensor] = {}
    for part, (tensors, source) in chosen.items():
        _fill_tied(part, tensors)
        module = getattr(backbone, part)
        try:
            result = module.load_state_dict(tensors, strict=False)
        except RuntimeError as err:  # shape mismatch
            raise BackboneLoadError(f"{source}: {part} does not match config.json of {dirs[0]} ({err})") from err
        if result.missing_keys:
            raise BackboneLoadError(f"{source}: {part} is missing {len(result.missing_keys)} tensors, e.g. "
                                    f"{part}.{result.missing_keys[0]}")
        if result.unexpected_keys:
            log.warning("%s: ignoring %d unexpected %s tensors, e.g. %s", source, len(result.unexpected_keys),
                        part, result.unexpected_keys[0])
        full_state.update({f"{part}.{k}": v for k, v in tensors.items() if k not in result.unexpected_keys})
    backbone._fingerprint = fingerprint_state_dict(full_state)
    backbone.source = ", ".join(str(d) for d in dirs)
    lacking = sorted(set(PARTS) - set(chosen))
    if lacking:
        log.info("backbone from %s lacks %s; serving only %s", backbone.source, lacking, sorted(backbone.tasks))
    backbone.requires_grad_(False)
    return backbone.to_settings(settings).eval()
