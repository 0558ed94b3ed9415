"""The training module's one doorway into the adapter library (adapters/).

Everything training does with adapters goes through these few functions: create a
live adapter with gradients, get the module and per-call routing to run the task
functions through it, count what it trains, save it with its recipe, and load a
saved file the way the server does (an `AdapterTable`) for evaluation.

    adapter = new_adapter("vcra-qasn", bb, task="vqa", rank=8, seed=0)
    model, route = live(bb, adapter)         # adapters.bind: route(n) -> routing of this live adapter
    save(adapter, "vqa.safetensors", recipe={...})
    model, route, n_params, info = load_for_eval(bb, "vqa.safetensors")

Kinds of the CLI are the library's registered kinds (adapters.KINDS), with one
training default: vcra = VCRA without QASN; vcra-qasn = VCRA with QASN wherever the
task runs the fusion encoder (vqa, retrieval; a caption forward never enters it, so
there it equals vcra and its file says "vcra"); vera = VeRA-style vectors with one
pair per modality and no QASN (the paper's '+scaling vectors' row); lora; the four
VL-PET granularities; full.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

import adapters

KINDS = tuple(adapters.KINDS)
NO_QASN_BY_DEFAULT = ("vcra", "vera")  # the CLI's vcra / vera rows are the ablation's "without QASN"
TEMPORAL_KINDS = ("vcra", "vcra-qasn", "vera")  # kinds with the temporal module option (video frame tokens)
ADAPTER_TASK = {"caption": "caption", "vqa": "vqa", "retrieval": "retrieve"}  # training name -> adapters' name


def new_adapter(kind: str, bb, *, task: str, rank: int, seed: int, train_ab: bool = False,
                targets: list[str] | None = None, temporal: bool = False) -> nn.Module:
    """`targets`: the modalities to adapt (None: the task's default); `temporal`: add the
    temporal module on video frame tokens (adapters/kinds/vcra/temporal.py)."""
    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, got {kind!r}")
    options = {"qasn": False} if kind in NO_QASN_BY_DEFAULT else {}
    if targets:
        options["targets"] = tuple(targets)
    if temporal:
        if kind not in TEMPORAL_KINDS:
            raise ValueError(f"--temporal is an option of kinds {TEMPORAL_KINDS}, not {kind!r}")
        options["temporal"] = True
    return adapters.create_adapter(kind, bb, task=ADAPTER_TASK[task], rank=rank, seed=seed, train_ab=train_ab,
                                   **options)


def live(bb, adapter: nn.Module):
    """(module to run task functions on, route): `adapters.bind`, the library's one way."""
    return adapters.bind(bb, adapter)


def trainable_count(adapter: nn.Module | None) -> int:
    return 0 if adapter is None else int(adapter.trainable_count())


def temporal_count(adapter: nn.Module | None) -> int:
    """Numbers of the temporal module (time codes + motion vectors), part of trainable_count; 0 without it."""
    layout = getattr(adapter, "layout", None)
    return int(layout.temporal_count()) if layout is not None and hasattr(layout, "temporal_count") else 0


def paper_count(adapter: nn.Module | None) -> int:
    """The paper's Θ (sec. 3.2), which counts the shared A, B even when they stay frozen
    at their seeded values; equals trainable_count for every other kind. A temporal module
    (not in the paper) is in trainable_count and so here too: Θ + (K + 2)·Hv."""
    if adapter is None:
        return 0
    n = trainable_count(adapter)
    layout = getattr(adapter, "layout", None)
    if layout is not None and not adapter.config.train_ab:
        n += sum(adapter.config.rank * (d_in + d_out) for d_in, d_out in layout.pairs.values())
    return n


def check_optimizer_params(adapter: nn.Module, params: list) -> None:
    """Assert the optimizer gets exactly the adapter's trainable tensors."""
    if getattr(adapter, "model", None) is None:  # a full fine-tune's optimizer holds its copy
        assert sum(p.numel() for p in params) == trainable_count(adapter), \
            f"optimizer holds {sum(p.numel() for p in params)} values, the adapter trains {trainable_count(adapter)}"


def save(adapter: nn.Module, path, *, recipe: dict) -> Path:
    """An adapter file; for kind=full a backbone directory at `path` (see adapters.kinds.full)."""
    return adapters.save_adapter(adapter, path, recipe=recipe)


def load_for_eval(bb, path: str) -> tuple[Any, Any, int, dict]:
    """'none' -> the frozen backbone. A directory -> a fully fine-tuned backbone saved by
    fit --kind full. A file -> loaded into an AdapterTable as the server does, every row
    routed to it. Returns (model, route, trainable count, info)."""
    if path == "none":
        return bb, (lambda n: None), 0, {"kind": "frozen"}
    if Path(path).is_dir():
        from adapters.backbone import Backbone

        full = Backbone.from_dirs(path)
        return full, (lambda n: None), sum(p.numel() for p in full.parameters()), {"kind": "full"}
    table = adapters.AdapterTable(bb, capacity=1)
    meta = table.load("eval", path)
    info = {"kind": meta.kind, "rank": meta.rank, "adapter_task": meta.task}
    return bb, (lambda n: table.routing(["eval"] * n)), int(meta.trainable_params), info
