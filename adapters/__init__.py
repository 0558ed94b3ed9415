"""unitrans adapters: one frozen BLIP backbone, many small task adapters chosen per request.

Serving (the server runs every model call and table mutation on ONE worker thread):

    from adapters import AdapterTable, predict
    bb = Backbone.from_dirs("models/blip-shapes")
    table = AdapterTable(bb, capacity=64)               # injects wrappers once; preallocated slots
    meta = table.load("vqa-shapes", "adapters/vqa-shapes.safetensors")  # AdapterFileError on a bad file
    routing = table.routing(["vqa-shapes", None])       # per request; None = frozen backbone
    answers = predict.answers(bb, px, predict.question_ids(bb, questions, 40), routing=routing)

Training (another module owns the loop; this is the whole contract):

    adapter = create_adapter("vcra", bb, task="vqa", rank=8, seed=0, train_ab=False)  # qasn auto-on
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-3)  # .parameters() = exactly the trainable ones
    with attach(bb, adapter) as model:                  # same forward code as serving, with grads
        states = tasks.fuse(model, ids, mask, tasks.encode_image(model, px))
    tasks.caption_ids(bb, px, routing=adapter.routing())   # explicit routing; without it the one in force applies
    save_adapter(adapter, "adapters/vqa.safetensors", recipe={"lr": 1e-3, "epochs": 5})
    adapter = load_adapter("adapters/vqa.safetensors", bb)

API (exact signatures):
    create_adapter(kind, backbone, *, task, rank=8, seed=0, train_ab=False, **kind_options) -> adapter
        kind in "vcra" | "vera" | "lora" | "full"; task in "caption" | "vqa" | "retrieve"
        vcra/vera options: targets=(modalities...), qasn=None|bool, scale_init=1.0; lora: targets, alpha
        adapter: nn.Module with .kind .task .rank .seed .config .backbone_fingerprint,
                 .trainable_count() -> int, .routing() -> Routing (live parameters, all rows)
        "full" is training-only: attach() yields its trainable copy; save_adapter writes a backbone dir.
    attach(backbone, adapter) -> context manager yielding the module to run task functions on
    save_adapter(adapter, path, *, recipe: dict) -> Path
    load_adapter(path, backbone) -> adapter                       (raises AdapterFileError)
    read_adapter_meta(path) -> AdapterMeta                        (header only; raises AdapterFileError)
    AdapterTable(backbone, capacity=64, max_rank=32)
        .load(name, path) -> AdapterMeta     .insert(name, adapter) -> AdapterMeta
        .evict(name)   .pin(name, pinned=True)   name in table   .names() -> list[str]
        .meta(name) -> AdapterMeta   .routing(names: list[str | None]) -> Routing   len(table)
        .pinned(name) -> bool   .slot_nbytes   .generation (bumped by every mutation)
        A routing is valid until the table next changes (a stale one raises AdapterTableError).
    AdapterMeta: kind task rank seed train_ab targets options trainable_params nbytes
                 backbone_fingerprint format_version recipe created path
    Errors (adapters.errors): AdapterFileError (bad file), AdapterTableError (unknown name, full
        with all pinned, stale routing, rank > max_rank, other backbone).

Modules: vcra/ (config, layer, model), vera/, lora/ (config, layer, model), qasn.py (side
network), full.py, injection.py (wrappers), mixed.py (the Routing object), files.py, table.py,
kinds.py (create_adapter, attach), tasks.py (batched task functions, transformers' semantics),
predict.py (predictions as served and evaluated: decoding defaults, question padding, scores). Nothing here loads a model at import time.
"""

from adapters.errors import AdapterFileError, AdapterTableError
from adapters.files import AdapterMeta, load_adapter, read_adapter_meta, save_adapter
from adapters.injection import inject
from adapters.kinds import KINDS, attach, create_adapter
from adapters.mixed import Routing
from adapters.routing import routed
from adapters.table import AdapterTable

__all__ = [
    "AdapterFileError", "AdapterMeta", "AdapterTable", "AdapterTableError", "KINDS", "Routing", "attach",
    "create_adapter", "inject", "load_adapter", "read_adapter_meta", "routed", "save_adapter",
]
