"""unitrans adapters: one frozen BLIP backbone, many small task adapters chosen per request.

Serving (the server runs every model call and table mutation on ONE worker thread):

    from adapters import AdapterTable, predict
    bb = Backbone.from_dirs("models/blip-shapes")
    table = AdapterTable(bb, capacity=64)               # injects wrappers once; preallocated slots
    meta = table.load("vqa-shapes", "adapters/vqa-shapes.safetensors")  # AdapterFileError on a bad file
    routing = table.routing(["vqa-shapes", None])       # per request; None = frozen backbone
    answers = predict.answers(bb, px, predict.question_ids(bb, questions, 40), routing=routing)

Training (another module owns the loop; this is the whole contract):

    adapter = create_adapter("vcra-qasn", bb, task="vqa", rank=8, seed=0, train_ab=False)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-3)  # .parameters() = exactly the trainable ones
    model, route = bind(bb, adapter)                    # the one way to run: route(n) -> Routing
    with routed(route(len(ids))):                       # same forward code as serving, with grads
        states = tasks.fuse(model, ids, mask, tasks.encode_image(model, px))
    tasks.caption_ids(model, px, routing=route(len(px)))   # task functions enter a routing themselves
    save_adapter(adapter, "adapters/vqa.safetensors", recipe={"lr": 1e-3, "epochs": 5})
    adapter = load_adapter("adapters/vqa.safetensors", bb)

API (exact signatures):
    create_adapter(kind, backbone, *, task, rank=8, seed=0, train_ab=False, **kind_options) -> adapter
        kind: a name of adapters.kinds.KINDS ("vcra", "vcra-qasn", "vera", "lora", "vl-pet-large",
        "vl-pet-middle-x", "vl-pet-middle-y", "vl-pet-small", "full"); task "caption" | "vqa" | "retrieve"
        vcra/vera options: targets=(modalities...), qasn=None|bool, scale_init=1.0, temporal=False
        (vqa/retrieve: the temporal module on video frame tokens, adapters/kinds/vcra/temporal.py); lora: targets, alpha;
        vl-pet-*: targets=(parts...), gate_rank
        adapter: nn.Module with .kind .task .rank .seed .config .backbone_fingerprint,
                 .trainable_count() -> int, .routing() -> Routing (live parameters, all rows)
        "full" is training-only: attach() yields its trainable copy; save_adapter writes a backbone dir.
    bind(backbone, adapter) -> (module, route)      route(n) -> Routing of n rows through the live adapter
    attach(backbone, adapter) -> context manager: bind + routed, yields the module
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
                 backbone_fingerprint format_version recipe created path header_kind
    peft interop (adapters.runtime.peft_interop): load_peft_lora(dir, backbone, task=...) -> adapter;
        export_peft_lora(adapter, dir, backbone) writes adapter_config.json + adapter_model.safetensors
    Errors (adapters.errors): AdapterFileError (bad file), AdapterTableError (unknown name, full
        with all pinned, stale routing, rank > max_rank, other backbone).

Layout, in three parts (none imports server/ or training/; nothing loads a model at import):
    backbone/  the frozen BLIP: parts, loading, conversion, task functions, predictions
    kinds/     one folder per adapter kind + the registry (kinds/__init__.py); base.py = protocol
    runtime/   what runs any kind: sites, injection, routing, table, files, run (create/bind),
               peft interop
"""


from adapters.backbone import predict, tasks
from adapters.errors import AdapterFileError, AdapterTableError
from adapters.kinds import KINDS
from adapters.runtime.files import AdapterMeta, load_adapter, read_adapter_meta, save_adapter
from adapters.runtime.injection import inject
from adapters.runtime.routing import Routing, routed
from adapters.runtime.run import attach, bind, create_adapter
from adapters.runtime.table import AdapterTable

__all__ = [
    "AdapterFileError", "AdapterMeta", "AdapterTable", "AdapterTableError", "KINDS", "Routing", "attach", "bind",
    "create_adapter", "inject", "load_adapter", "predict", "read_adapter_meta", "routed", "save_adapter", "tasks",
]
