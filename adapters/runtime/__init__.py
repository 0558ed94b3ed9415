"""The runtime: what runs adapters beside the frozen backbone, whatever their kind.

    sites.py       attachment points of a backbone (q/k/v projections, fusion blocks, sublayers)
    routing.py     `Routing` (which adapter each row uses) and the `routed` scope it runs in
    injection.py   wrappers and hooks put into the backbone once; they call the routing
    run.py         create an adapter of a registered kind; bind it for a forward (the one way)
    table.py       `AdapterTable`: preallocated slots of resident adapters, LRU, pinning
    files.py       adapter files (safetensors + validated header)
    peft_interop.py  PEFT LoRA directories in and out

Kind-specific code lives in `adapters.kinds.<kind>`; nothing here names a kind.
Submodules are imported where used (this package imports none eagerly).
"""
