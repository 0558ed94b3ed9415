"""The kind protocol: what shared code (table, files, run) asks an adapter kind.

A kind is a folder `adapters/kinds/<kind>/` (config.py, layer.py, model.py, and what
else it needs) plus one line in the registry `adapters.kinds.KINDS`. Shared code
looks a kind up by the name an adapter or a file header carries and calls the methods
below; it never compares kind names.

    kind = KINDS[name]
    adapter = kind.create(bb, task="vqa", rank=8, seed=0, train_ab=False, **options)
    kind.header_options(adapter)           -> dict stored in the file header
    kind.reported_kind(options)            -> the name a file with these options is listed as

Table slots (`adapters.runtime.table`). Every resident adapter has a slot index. A kind
either writes its tensors into a bank preallocated for all slots (`bank_key` names
the bank; kinds with one key share it; `new_bank` makes it), or keeps its own
tensors with the slot (`bank_key = None`, the default: grouped per adapter in a batch).

    payload = kind.prepare(adapter, table)       validate and cast; no table mutation
    kind.store(table, index, payload)            write the slot (bank row, shared refs)
    kind.release(table, index, payload)          undo store's references (not the bank row)
    kind.route(table, members, batch)            [(payload, slot, request indices)] routed
                                                 together (`group_key`) -> RoutingGroups

Sharing the vision tower (serving fan-out and the image-feature cache). The server runs
the ViT once per image for every adapter that leaves it frozen, and keys cached image
tokens by the vision-side adapter state, so each kind answers

    kind.touches_vision(meta)   -> bool: does an adapter with this AdapterMeta change the
                                   ViT's output tokens? (False: its image tokens are the
                                   frozen backbone's, shared with every such adapter)
"""

from __future__ import annotations

import torch

from adapters.errors import AdapterTableError

TASKS = ("caption", "vqa", "retrieve")
# Modalities a task's forward runs through; the default targets of every kind.
TASK_TARGETS = {
    "caption": ("vision", "decoder", "decoder_cross"),
    "vqa": ("vision", "text", "cross", "decoder", "decoder_cross"),
    "retrieve": ("vision", "text", "cross"),
}
DEFAULT_RANK = 8
DEFAULT_SEED = 0


def validate_task_rank_seed(task: str, rank, seed, tasks: tuple[str, ...] = TASKS) -> None:
    if task not in tasks:
        raise ValueError(f"task must be one of {tasks}, got {task!r}")
    if not (isinstance(rank, int) and rank >= 1):
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if not (isinstance(seed, int) and 0 <= seed < 2**63):
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")


def requests_tensor(rows: list[int], batch: int, device) -> torch.Tensor | None:
    """Request indices (m,), or None when they are every row of the batch."""
    return None if len(rows) == batch else torch.tensor(rows, dtype=torch.long, device=device)


class ConfigIdentity:
    """Mixin for adapter modules holding a `.config` with task, rank and seed."""

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def rank(self) -> int:
        return self.config.rank

    @property
    def seed(self) -> int:
        return self.config.seed


class AdapterKind:
    """Defaults fit a kind whose adapters keep their own tensors (LoRA, VL-PET): the
    slot holds them, and each adapter present in a batch is one routing group."""

    name: str = ""
    servable = True  # False: training-only (no table slot, no adapter file)
    bank_key: str | None = None

    # -- making adapters ---------------------------------------------------------------------
    def create(self, backbone, *, task: str, rank: int, seed: int, train_ab: bool, **options):
        raise NotImplementedError

    def header_options(self, adapter) -> dict:
        """Kind options to rebuild `adapter` with `create` (task, rank, seed, train_ab and
        targets have header fields of their own)."""
        options = dict(adapter.config.options())
        for own_field in ("targets", "train_ab"):
            options.pop(own_field, None)
        return options

    def reported_kind(self, options: dict) -> str:
        return self.name

    # -- table slots ---------------------------------------------------------------------------
    def new_bank(self, backbone, capacity: int, max_rank: int):
        return None

    def prepare(self, adapter, table):
        """Own tensors, detached and cast to the backbone's device and dtype."""
        kw = dict(device=table.backbone.device, dtype=table.backbone.dtype)
        with torch.no_grad():
            return {k: v.detach().to(**kw) for k, v in adapter.state_dict().items()}

    def store(self, table, index: int, payload) -> None:
        pass

    def release(self, table, index: int, payload) -> None:
        pass

    def route(self, table, members: list, batch: int) -> list:
        """One group per adapter: members = [(payload, slot, request indices)], batch = B."""
        return [self.group(payload, requests_tensor(rows, batch, table.backbone.device)) for payload, _, rows in members]

    def group(self, payload, requests):
        raise NotImplementedError

    def group_key(self, payload, slot: int):
        """Members with equal keys are routed together (one `route` call)."""
        return (self.bank_key or self.name, slot if self.bank_key is None else None)

    # -- sharing the vision tower -----------------------------------------------------------------
    def touches_vision(self, meta) -> bool:
        """True when an adapter described by `meta` (an AdapterMeta: targets, options) changes
        the image tokens the vision encoder outputs. Every kind must answer for itself."""
        raise NotImplementedError(f"kind {self.name!r} does not say whether it touches the vision tower")

    # -- interop --------------------------------------------------------------------------------
    def lora_factors(self, adapter, backbone) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{site key: (A (r, in), B (out, r))} with delta(x) = B A x exactly (LoRA scaling 1),
        for kinds whose every delta is low-rank and linear in x (`runtime.peft_interop`)."""
        raise ValueError(f"kind {self.name!r} has no LoRA form: its delta is not B A x on q/k/v projections")

    @staticmethod
    def check_rank(adapter, table, name: str) -> None:
        if adapter.rank > table.max_rank:
            raise AdapterTableError(f"adapter {name!r} has rank {adapter.rank} > the table's max_rank {table.max_rank}")
