"""Adapter kinds behind one constructor, and running the backbone through one live adapter.

    adapter = create_adapter("vcra", bb, task="vqa", rank=8, seed=0)        # train_ab=False, qasn auto
    with attach(bb, adapter) as model:                                        # same forward as serving
        loss = lm_loss(tasks.fuse(model, ids, mask, tasks.encode_image(model, px)), ...)

`attach` enters `routed(adapter.routing())`; functions of `adapters.tasks` that take a
`routing=` argument enter their own, so inside the block pass `routing=adapter.routing()`
to them (e.g. for evaluation with `tasks.caption_ids`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from adapters.full import FullFinetune
from adapters.injection import inject
from adapters.lora import LoraAdapter, LoraConfig
from adapters.routing import routed
from adapters.vcra import DEFAULT_RANK, DEFAULT_SEED, VcraAdapter, VcraConfig
from adapters.vera import VeraAdapter

KINDS = ("vcra", "vera", "lora", "full")
SERVABLE_KINDS = ("vcra", "vera", "lora")


def create_adapter(kind: str, backbone, *, task: str, rank: int = DEFAULT_RANK, seed: int = DEFAULT_SEED,
                   train_ab: bool = False, **kind_options):
    """A fresh adapter of `kind` for `backbone` that leaves it unchanged (delta 0).
    `.parameters()` are exactly the trainable tensors.

    kind_options: vcra/vera: targets, qasn, scale_init; lora: targets, alpha (A, B always
    train; train_ab is ignored); full: none (rank/seed ignored)."""
    if kind not in KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; kinds are {KINDS}")
    if kind == "full":
        if kind_options:
            raise ValueError(f"full fine-tuning takes no options, got {sorted(kind_options)}")
        return FullFinetune(backbone, task)
    inject(backbone)
    if kind == "lora":
        adapter = LoraAdapter(LoraConfig(task=task, rank=rank, seed=seed, **kind_options), backbone)
    else:
        options = dict(kind_options)
        if kind == "vera":
            options["share"] = "modality"
        elif options.get("share", "cross_modal") != "cross_modal":
            raise ValueError("kind 'vcra' shares its pair across modalities; use kind 'vera' for one pair per modality")
        config = VcraConfig(task=task, rank=rank, seed=seed, train_ab=train_ab, **options)
        adapter = (VeraAdapter if kind == "vera" else VcraAdapter)(config, backbone)
    adapter.backbone_fingerprint = backbone.fingerprint
    return adapter


def adapter_options(adapter) -> dict:
    """Kind options to rebuild `adapter` with create_adapter (stored in the file header)."""
    options = adapter.config.options()
    options.pop("share", None)  # implied by the kind
    options.pop("train_ab", None)  # its own argument / header field
    options.pop("targets", None)  # its own header field
    return options


@contextmanager
def attach(backbone, adapter) -> Iterator:
    """Run `backbone` through one live adapter, with gradients; yields the module to
    call task functions on (the backbone itself, or the trainable copy for "full")."""
    if isinstance(adapter, FullFinetune):
        with routed(None):
            yield adapter.model
        return
    inject(backbone)
    with routed(adapter.routing()):
        yield backbone
