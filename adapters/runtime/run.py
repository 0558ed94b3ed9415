"""Making an adapter of a registered kind, and the one way to run the backbone through it.

    adapter = create_adapter("vcra-qasn", bb, task="vqa", rank=8, seed=0)
    model, route = bind(bb, adapter)          # route: n rows -> Routing (or None)
    with routed(route(len(ids))):             # same forward code as serving, with grads
        states = tasks.fuse(model, ids, mask, tasks.encode_image(model, px))
    tasks.caption_ids(model, px, routing=route(len(px)))   # task functions take the routing too

Every forward with adapters runs one way: a `Routing` (from `bind` for a live adapter,
from `AdapterTable.routing(names)` for resident ones) is entered with `routed` for the
call; the task functions' `routing=` argument enters it for you. `attach` is `bind`
plus `routed` as one context manager, for code that runs a single live adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from adapters.kinds import get_kind
from adapters.kinds.base import DEFAULT_RANK, DEFAULT_SEED
from adapters.runtime.injection import inject
from adapters.runtime.routing import Routing, routed

Route = Callable[[int], "Routing | None"]


def create_adapter(kind: str, backbone, *, task: str, rank: int = DEFAULT_RANK, seed: int = DEFAULT_SEED,
                   train_ab: bool = False, **kind_options):
    """A fresh adapter of `kind` for `backbone` that leaves it unchanged where the kind
    allows (see each kind's docstring). `.parameters()` are exactly the trainable tensors.

    kind_options: vcra/vcra-qasn/vera: targets, qasn, scale_init, temporal (vqa/retrieve: video); lora: targets, alpha
    (A, B always train; train_ab is ignored); vl-pet-*: targets, gate_rank; full: none."""
    spec = get_kind(kind)
    if spec.servable:
        inject(backbone)
    adapter = spec.create(backbone, task=task, rank=rank, seed=seed, train_ab=train_ab, **kind_options)
    adapter.backbone_fingerprint = backbone.fingerprint
    return adapter


def adapter_options(adapter) -> dict:
    """Kind options to rebuild `adapter` with create_adapter (stored in the file header)."""
    return get_kind(adapter.kind).header_options(adapter)


def bind(backbone, adapter) -> tuple[object, Route]:
    """(module to run task functions on, route: n rows -> routing of every row through
    `adapter`'s live parameters). None: the frozen backbone. A training-only kind that
    changes the weights themselves ("full") runs its own copy with no routing."""
    if adapter is None:
        return backbone, lambda n: None
    routing = adapter.routing
    model = getattr(adapter, "model", None)  # full fine-tune: its trainable copy
    if model is not None:
        return model, lambda n: None
    inject(backbone)
    return backbone, lambda n: routing()


@contextmanager
def attach(backbone, adapter) -> Iterator:
    """`bind` and `routed` in one: inside the block every call runs through `adapter`,
    with gradients; yields the module to call task functions on."""
    model, route = bind(backbone, adapter)
    with routed(route(0)):
        yield model
