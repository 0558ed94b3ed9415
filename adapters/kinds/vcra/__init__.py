"""VCRA: vector-based cross-modal random matrix adaptation.

    config.py  VcraConfig, which vectors exist, which shared pair each site reads
    layer.py   the math on one projection (draw the pair, fold, apply)
    model.py   VcraAdapter: one task's trainable vectors (+ QASN), its live routing
    qasn.py    the query-augmentation side network on the fusion blocks
    bank.py    the slot bank and the routing group that runs VCRA rows of a batch
    kind.py    the registered kinds "vcra" and "vcra-qasn" (creation, header, slots)

Submodules are imported where used (nothing here imports them eagerly).
"""
