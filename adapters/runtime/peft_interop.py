"""PEFT LoRA interop, both ways: a peft LoRA directory in as a served adapter, ours out
as a peft LoRA directory that transformers + peft users load with `PeftModel`.

    adapter = load_peft_lora("peft-dir", bb, task="vqa")        # a LoraAdapter, exact
    table.insert("from-peft", adapter)                          # served in mixed batches
    export_peft_lora(adapter, "out-dir", bb)                     # vcra, vera, lora -> peft LoRA
    python -m adapters.runtime.peft_interop import peft-dir --backbone DIR --task vqa --out a.safetensors
    python -m adapters.runtime.peft_interop export a.safetensors --backbone DIR --out peft-dir

A peft directory holds `adapter_config.json` (peft_type "LORA", r, lora_alpha,
target_modules, ...) and `adapter_model.safetensors` with tensors named
`base_model.model.<module path>.lora_A.weight` (r, in) / `.lora_B.weight` (out, r).
BLIP's transformers classes and our `Backbone` share module paths (vision_model.*,
text_encoder.*, text_decoder.*), so a path names one of our attachment sites.

In: every LoRA pair must sit on a q/k/v site (query/key/value, or the ViT's fused
qkv); bias "none", no DoRA, no per-module rank or alpha patterns; anything else is
refused with an `AdapterFileError` naming it. q/k/v sites of the covered modalities
that the directory leaves out get B = 0 (an exact zero delta).

Out: a kind exports when its delta is B A x on q/k/v projections (`lora_factors`):
VCRA/VeRA's ΔW = diag(s·Λb) B diag(Λa) A has rank <= r, LoRA is one already; QASN
and VL-PET are not linear deltas and are refused. Written at lora_alpha = r (scaling
1), target_modules a regex matching exactly the exported modules.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from adapters.backbone import Backbone
from adapters.errors import AdapterFileError
from adapters.kinds import get_kind
from adapters.runtime.files import load_adapter, save_adapter
from adapters.runtime.injection import injected_sites
from adapters.runtime.run import create_adapter
from adapters.runtime.sites import site_key

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<path>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def _fail(directory, what: str):
    raise AdapterFileError(f"peft adapter {Path(directory).name}: {what}")


def _read_config(directory: Path) -> dict:
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        _fail(directory, f"cannot read {CONFIG} ({e})")
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        _fail(directory, f"{CONFIG}: peft_type is {config.get('peft_type') if isinstance(config, dict) else None!r}, "
                         "only LORA is read")
    for field, ok in (("bias", lambda v: v in (None, "none")), ("use_dora", lambda v: not v),
                      ("rank_pattern", lambda v: not v), ("alpha_pattern", lambda v: not v),
                      ("modules_to_save", lambda v: not v), ("fan_in_fan_out", lambda v: not v)):
        if not ok(config.get(field)):
            _fail(directory, f"{CONFIG}: {field}={config.get(field)!r} is not supported")
    if not (isinstance(config.get("r"), int) and config["r"] >= 1):
        _fail(directory, f"{CONFIG}: r={config.get('r')!r} is not a positive int")
    return config


def load_peft_lora(directory, backbone, *, task: str):
    """A `LoraAdapter` of `task` for `backbone` holding the directory's LoRA pairs exactly
    (its scaling: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora)."""
    directory = Path(directory)
    config = _read_config(directory)
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except Exception as e:  # safetensors raises its own types for corrupt bytes
        _fail(directory, f"cannot read {WEIGHTS} ({e})")
    by_path = {s.path: s for s in injected_sites(backbone)}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        m = _KEY.match(name)
        if m is None:
            _fail(directory, f"tensor {name!r} is not a LoRA A/B weight")
        if m["path"] not in by_path:
            _fail(directory, f"tensor {name!r} adapts {m['path']!r}, which is no q/k/v projection of this backbone")
        if not torch.isfinite(tensor).all():
            _fail(directory, f"tensor {name!r} holds NaN or inf")
        pairs.setdefault(m["path"], {})[m["ab"]] = tensor.float()
    if not pairs:
        _fail(directory, f"{WEIGHTS} holds no LoRA weights")
    r = config["r"]
    rank = r
    alpha = float(config.get("lora_alpha", r))
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    targets = tuple(sorted({by_path[p].modality for p in pairs}))
    try:
        adapter = create_adapter("lora", backbone, task=task, rank=rank, seed=0, targets=targets, alpha=scaling * rank)
    except ValueError as e:
        _fail(directory, f"describes no LoRA adapter of task {task!r} for this backbone ({e})")
    with torch.no_grad():
        for b in adapter.B.values():
            b.zero_()  # sites the directory leaves out: exact zero delta
        for path, ab in pairs.items():
            site = by_path[path]
            key = site_key(site)
            if set(ab) != {"A", "B"}:
                _fail(directory, f"{path} has lora_{''.join(sorted(set('AB') - set(ab)))} missing")
            if ab["A"].shape != (rank, site.in_features) or ab["B"].shape != (site.out_features, rank):
                _fail(directory, f"{path}: lora_A {tuple(ab['A'].shape)} / lora_B {tuple(ab['B'].shape)}, expected "
                                 f"({rank}, {site.in_features}) / ({site.out_features}, {rank})")
            adapter.A[key].copy_(ab["A"])
            adapter.B[key].copy_(ab["B"])
    return adapter


def export_peft_lora(adapter, directory, backbone) -> Path:
    """Write `adapter` as a peft LoRA directory (scaling 1). Raises ValueError for kinds
    without a LoRA form (QASN, VL-PET)."""
    factors = get_kind(adapter.kind).lora_factors(adapter, backbone)
    paths = {site_key(s): s.path for s in injected_sites(backbone)}
    rank = max(a.shape[0] for a, _ in factors.values())
    tensors = {}
    for key, (a, b) in factors.items():
        if a.shape[0] < rank:  # pad a lower rank with zero rows / columns: same product
            a = torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])])
            b = torch.cat([b, b.new_zeros(b.shape[0], rank - b.shape[1])], dim=1)
        tensors[f"{_PREFIX}{paths[key]}.lora_A.weight"] = a.detach().to("cpu", torch.float32).contiguous()
        tensors[f"{_PREFIX}{paths[key]}.lora_B.weight"] = b.detach().to("cpu", torch.float32).contiguous()
    modules = sorted(paths[k] for k in factors)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none",
              "target_modules": "^(" + "|".join(re.escape(m) for m in modules) + ")$", "fan_in_fan_out": False,
              "use_rslora": False, "use_dora": False, "init_lora_weights": True, "task_type": None,
              "modules_to_save": None, "base_model_name_or_path": None, "inference_mode": True,
              "revision": None, "rank_pattern": {}, "alpha_pattern": {}}
    source = {"format": "pt", "unitrans_kind": adapter.kind, "unitrans_task": adapter.task,  # provenance
              "unitrans_backbone_fingerprint": str(getattr(adapter, "backbone_fingerprint", ""))}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / WEIGHTS), metadata=source)
    (directory / CONFIG).write_text(json.dumps(config, indent=2))
    return directory


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m adapters.runtime.peft_interop", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="a peft LoRA directory -> a unitrans adapter file")
    imp.add_argument("peft_dir", help="directory with adapter_config.json and adapter_model.safetensors")
    imp.add_argument("--task", required=True, choices=["caption", "vqa", "retrieve"], help="task it serves")
    exp = sub.add_parser("export", help="a unitrans adapter file (vcra, vera, lora) -> a peft LoRA directory")
    exp.add_argument("adapter", help="unitrans adapter file (.safetensors)")
    for s in (imp, exp):
        s.add_argument("--backbone", required=True, help="backbone directory the adapter fits")
        s.add_argument("--out", required=True, help="file (import) or directory (export) to write")
    args = p.parse_args(argv)
    bb = Backbone.from_dirs(args.backbone)
    if args.command == "import":
        adapter = load_peft_lora(args.peft_dir, bb, task=args.task)
        print(save_adapter(adapter, args.out, recipe={"source": "peft", "peft_dir": str(args.peft_dir)}))
    else:
        print(export_peft_lora(load_adapter(args.adapter, bb), args.out, bb))


if __name__ == "__main__":
    main(sys.argv[1:])
