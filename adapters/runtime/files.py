"""Adapter files: one safetensors file per adapter, metadata in its header.

    save_adapter(adapter, "adapters/vqa-shapes.safetensors", recipe={"lr": 1e-3, ...})
    meta = read_adapter_meta(path)          # header only: cheap, for listings
    adapter = load_adapter(path, bb)        # validated; raises AdapterFileError

Header metadata (all strings, as safetensors requires):
    format "unitrans-adapter", format_version "1", kind (the registered kind the adapter
    is, e.g. "vcra-qasn"; files of kind "vcra" with qasn on, written before, list as
    "vcra-qasn" too), task, rank, seed, train_ab,
    targets (JSON list), options (JSON: the kind options), trainable_params,
    backbone_fingerprint, recipe (JSON), created (UTC ISO time)
Tensors: the adapter's state dict, float32. A VCRA/VeRA adapter with a frozen pair
stores only the seed: its (A, B) are regenerated on load.

Loading checks, in order, and refuses with an `AdapterFileError` naming the file and
the field or tensor: readable and complete (header length, JSON, data offsets vs file
size), format and version, fields and their types, backbone fingerprint, kind
options, tensor names / shapes / dtypes against the adapter those fields describe,
finiteness, and the trainable-parameter count.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from adapters.atomic import atomic_write
from adapters.errors import AdapterFileError
from adapters.kinds import get_kind, servable_kinds
from adapters.runtime.run import adapter_options, create_adapter

FORMAT = "unitrans-adapter"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "kind", "task", "rank", "seed", "train_ab", "targets", "options",
            "trainable_params", "backbone_fingerprint", "recipe")
MAX_HEADER = 16 * 1024 * 1024  # safetensors' own limit is 100 MB; ours are a few hundred KB


@dataclass(frozen=True)
class AdapterMeta:
    kind: str
    task: str
    rank: int
    seed: int
    train_ab: bool
    targets: tuple[str, ...]
    options: dict
    trainable_params: int
    nbytes: int  # bytes of tensor data (what the adapter adds beyond the shared backbone)
    backbone_fingerprint: str
    format_version: int
    recipe: dict = field(default_factory=dict)
    created: str = ""
    path: str = ""
    header_kind: str = ""  # the kind field as written (older files: "vcra" for vcra-qasn)


def meta_of(adapter) -> AdapterMeta:
    """The metadata an adapter in memory would have in its file header."""
    nbytes = sum(t.numel() * 4 for t in adapter.state_dict().values())
    return AdapterMeta(kind=adapter.kind, task=adapter.task, rank=adapter.rank, seed=adapter.seed,
                       train_ab=bool(getattr(adapter.config, "train_ab", True)), targets=tuple(adapter.config.targets),
                       options=adapter_options(adapter), trainable_params=adapter.trainable_count(), nbytes=nbytes,
                       backbone_fingerprint=adapter.backbone_fingerprint, format_version=FORMAT_VERSION,
                       header_kind=adapter.kind)


# -- writing ---------------------------------------------------------------------------
def save_adapter(adapter, path, *, recipe: dict) -> Path:
    """Write `adapter` to `path` (atomic rename). Returns the path. A full fine-tune
    writes a backbone directory instead (see adapters.kinds.full)."""
    if not get_kind(adapter.kind).servable:  # a full fine-tune: a backbone directory
        return adapter.save(path, recipe)
    path = Path(path)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in adapter.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "kind": adapter.kind,
        "task": adapter.task,
        "rank": str(adapter.rank),
        "seed": str(adapter.seed),
        "train_ab": json.dumps(bool(getattr(adapter.config, "train_ab", True))),
        "targets": json.dumps(list(adapter.config.targets)),
        "options": json.dumps(adapter_options(adapter)),
        "trainable_params": str(adapter.trainable_count()),
        "backbone_fingerprint": adapter.backbone_fingerprint,
        "recipe": json.dumps(recipe, sort_keys=True, default=str),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return atomic_write(path, st_save(tensors, metadata=meta))


# -- reading -------------------------------------------------------------------------------
def _fail(path, what: str):
    raise AdapterFileError(f"adapter file {Path(path).name}: {what}")


def _parse_header(path, head: bytes, file_size: int) -> tuple[dict, dict, int]:
    """-> (metadata, tensor entries, header length). Checks the layout against the size."""
    if file_size < 8 or len(head) < 8:
        _fail(path, f"truncated ({file_size} bytes): no safetensors header")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER or 8 + n > file_size:
        _fail(path, f"corrupt or truncated: header length {n} does not fit in {file_size} bytes")
    try:
        header = json.loads(head[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"corrupt header (not JSON: {e})")
    if not isinstance(header, dict):
        _fail(path, "corrupt header (not a JSON object)")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict):
        _fail(path, "no metadata in the header: not a unitrans adapter file")
    end = 0
    for name, entry in header.items():
        try:
            start, stop = entry["data_offsets"]
            dtype, shape = entry["dtype"], entry["shape"]
        except (TypeError, KeyError, ValueError):
            _fail(path, f"corrupt header entry for tensor {name!r}")
        if dtype != "F32":
            _fail(path, f"tensor {name!r} has dtype {dtype}, expected F32")
        count = 1
        for dim in shape:
            count *= dim
        if stop - start != 4 * count or start < 0:
            _fail(path, f"corrupt header: tensor {name!r} offsets {start}..{stop} do not match shape {shape}")
        end = max(end, stop)
    if 8 + n + end != file_size:
        _fail(path, f"truncated or padded: header promises {8 + n + end} bytes, file has {file_size}")
    return meta, header, n


def _meta_from_fields(path, meta: dict, entries: dict) -> AdapterMeta:
    missing = [k for k in REQUIRED if k not in meta]
    if meta.get("format") != FORMAT:
        _fail(path, f"field 'format' is {meta.get('format')!r}, expected {FORMAT!r}: not a unitrans adapter file")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        _fail(path, f"field 'format_version' is {meta.get('format_version')!r}, not an integer")
    if version != FORMAT_VERSION:
        _fail(path, f"field 'format_version' is {version}; this build reads version {FORMAT_VERSION}")
    if missing:
        _fail(path, f"missing header field(s) {missing}")
    field_name = ""
    try:
        field_name = "rank"
        rank = int(meta["rank"])
        field_name = "seed"
        seed = int(meta["seed"])
        field_name = "trainable_params"
        trainable = int(meta["trainable_params"])
        field_name = "train_ab"
        train_ab = json.loads(meta["train_ab"])
        field_name = "targets"
        targets = json.loads(meta["targets"])
        field_name = "options"
        options = json.loads(meta["options"])
        field_name = "recipe"
        recipe = json.loads(meta["recipe"])
    except (ValueError, TypeError) as e:
        _fail(path, f"field {field_name!r} is malformed ({e})")
    if not isinstance(train_ab, bool) or not isinstance(targets, list) or not isinstance(options, dict):
        _fail(path, "fields 'train_ab' / 'targets' / 'options' have the wrong JSON type")
    if meta["kind"] not in servable_kinds():
        _fail(path, f"field 'kind' is {meta['kind']!r}; adapter files hold one of {servable_kinds()}")
    nbytes = sum(e["data_offsets"][1] - e["data_offsets"][0] for e in entries.values())
    kind = get_kind(meta["kind"]).reported_kind(options)
    return AdapterMeta(kind=kind, header_kind=meta["kind"], task=meta["task"], rank=rank, seed=seed, train_ab=train_ab,
                       targets=tuple(targets), options=options, trainable_params=trainable, nbytes=nbytes,
                       backbone_fingerprint=meta["backbone_fingerprint"], format_version=version,
                       recipe=recipe if isinstance(recipe, dict) else {"recipe": recipe},
                       created=meta.get("created", ""), path=str(path))


def _open(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise AdapterFileError(f"adapter file {Path(path).name}: cannot read ({e.strerror or e})") from e


def read_adapter_meta(path) -> AdapterMeta:
    """Header only (reads the first bytes, not the tensors)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            head += f.read(min(n, MAX_HEADER + 1))
    except OSError as e:
        raise AdapterFileError(f"adapter file {Path(path).name}: cannot read ({e.strerror or e})") from e
    meta, entries, _ = _parse_header(path, head, size)
    return _meta_from_fields(path, meta, entries)


def load_adapter(path, backbone):
    """A validated adapter for `backbone`, ready for `AdapterTable.insert` or more training."""
    data = _open(path)
    meta_fields, entries, _ = _parse_header(path, data, len(data))
    meta = _meta_from_fields(path, meta_fields, entries)
    if meta.backbone_fingerprint != backbone.fingerprint:
        _fail(path, f"made for backbone {meta.backbone_fingerprint}, this backbone is {backbone.fingerprint}")
    try:
        adapter = create_adapter(meta.header_kind, backbone, task=meta.task, rank=meta.rank, seed=meta.seed,
                                 train_ab=meta.train_ab, targets=tuple(meta.targets), **meta.options)
    except (TypeError, ValueError) as e:
        _fail(path, f"header fields describe no valid {meta.header_kind} adapter for this backbone ({e})")
    expected = adapter.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected))
    if missing or unexpected:
        _fail(path, f"tensor names do not match a {meta.kind} adapter: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, tensor in expected.items():
        if list(entries[name]["shape"]) != list(tensor.shape):
            _fail(path, f"tensor {name!r} has shape {tuple(entries[name]['shape'])}, expected {tuple(tensor.shape)}")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own types for corrupt bytes
        _fail(path, f"corrupt tensor data ({e})")
    if tensors and not torch.isfinite(torch.cat([t.reshape(-1) for t in tensors.values()])).all():
        bad = next(name for name, t in tensors.items() if not torch.isfinite(t).all())
        _fail(path, f"tensor {bad!r} holds NaN or inf")
    if meta.trainable_params != adapter.trainable_count():
        _fail(path, f"field 'trainable_params' is {meta.trainable_params}, the tensors make {adapter.trainable_count()}")
    with torch.no_grad():
        for name, target in expected.items():  # names and shapes checked above
            target.copy_(tensors[name])
    adapter.meta = meta
    return adapter
