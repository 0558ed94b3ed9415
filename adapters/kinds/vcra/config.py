"""VCRA configuration and layout: which vectors an adapter has, which shared pair
each site reads, and the rule for sites whose dims differ from d.

Groups. A site's scaling vectors are keyed `"{modality}_{layer}_{q|kv}"`: the query
has its own (Λa, Λb), key and value share one (paper, sec. 4.1). The vision encoder's
fused `qkv` Linear (3h x h) reads both groups: out = [q; k; v] = three h-sized
blocks, the first scaled with the q vectors, the other two with the kv vectors.

Pairs. `share="cross_modal"` (VCRA): one pair "enc" for vision, text and cross
(fusion) modules of every block; the decoder gets its own pair "dec" (paper, sec.
4.3.1: "due to the structural differences between the encoder and decoder, we did
not share the random matrices"). `share="modality"` (the VeRA '+scaling vectors'
ablation): one pair per modality.

Dims rule. A pair is A (r x d_in), B (d_out x r) with d_in = the widest input and
d_out = the widest per-projection output among the sites it serves, over every
site of its modalities present in the backbone (not just the targeted ones, so the
pair a seed draws never depends on targets). A site with in_features < d_in reads
A[:, :in]; one with per-projection out < d_out reads B[:out, :] (peft VeRA's
slicing). On BLIP-base every width is 768: A is r x 768, B is 768 x r, the paper's
shapes. Cross-attention key/value read image tokens (in = vision width); the
fused vision qkv has per-projection out = h.

Decoder. Caption and VQA answers come out of the decoder, so a caption/VQA adapter
that left it frozen could only move the image (or question) features; it gets VCRA
on its self-attention ("decoder") and cross-attention ("decoder_cross") q/k/v, each
with per-layer vectors, through the "dec" pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.kinds.base import DEFAULT_RANK, DEFAULT_SEED, TASK_TARGETS, TASKS, validate_task_rank_seed
from adapters.kinds.vcra.temporal import TEMPORAL_KNOTS
from adapters.runtime.sites import MODALITIES, Site

SHARES = ("cross_modal", "modality")
_CROSS_MODAL_PAIR = {"vision": "enc", "text": "enc", "cross": "enc", "decoder": "dec", "decoder_cross": "dec"}


@dataclass(frozen=True)
class VcraConfig:
    task: str
    rank: int = DEFAULT_RANK
    seed: int = DEFAULT_SEED  # seeds the shared pair(s); adapters with equal (seed, rank) share them
    targets: tuple[str, ...] = ()  # () -> TASK_TARGETS[task]
    train_ab: bool = False  # False: A, B frozen, regenerated from the seed, not stored in the file
    qasn: bool | None = None  # None -> on iff the task runs the fusion encoder (vqa, retrieve)
    share: str = "cross_modal"  # "modality" = VeRA without cross-modal sharing
    scale_init: float = 1.0  # s; the delta starts at 0 through Λb = 0 whatever s is
    temporal: bool = False  # the temporal module on video frame tokens (temporal.py); off: files as before

    def __post_init__(self):
        validate_task_rank_seed(self.task, self.rank, self.seed, TASKS)
        if self.share not in SHARES:
            raise ValueError(f"share must be one of {SHARES}, got {self.share!r}")
        targets = tuple(self.targets) or TASK_TARGETS[self.task]
        bad = [t for t in targets if t not in MODALITIES]
        if bad or len(set(targets)) != len(targets):
            raise ValueError(f"targets must be distinct modalities from {MODALITIES}, got {targets}")
        object.__setattr__(self, "targets", tuple(m for m in MODALITIES if m in targets))
        if self.qasn is None:
            object.__setattr__(self, "qasn", "cross" in TASK_TARGETS[self.task])
        if not isinstance(self.temporal, bool):
            raise ValueError(f"temporal must be a bool, got {self.temporal!r}")
        if self.temporal and "cross" not in TASK_TARGETS[self.task]:
            raise ValueError(f"temporal acts where the fusion encoder and ITC read video frame tokens (vqa, "
                             f"retrieve); a {self.task} adapter has neither")

    def pair_of(self, modality: str) -> str:
        return _CROSS_MODAL_PAIR[modality] if self.share == "cross_modal" else modality

    def options(self) -> dict:
        """Kind options as stored in a file header (everything but task/rank/seed)."""
        options = {"targets": list(self.targets), "train_ab": self.train_ab, "qasn": self.qasn,
                   "share": self.share, "scale_init": self.scale_init}
        if self.temporal:  # only when on: adapters without it keep the header they always had
            options["temporal"] = True
        return options


def group_keys(site: Site) -> tuple[str, ...]:
    """Vector groups a site reads: q -> (q,), k/v -> (kv,), fused vision qkv -> (q, kv)."""
    base = f"{site.modality}_{site.layer}_"
    if site.proj == "qkv":
        return base + "q", base + "kv"
    return (base + ("q" if site.proj == "q" else "kv"),)


def proj_out(site: Site) -> int:
    """Output width of one projection (the fused qkv holds three)."""
    return site.out_features // 3 if site.proj == "qkv" else site.out_features


@dataclass
class VcraLayout:
    """Shapes an adapter of `config` has on a backbone with `sites`."""

    groups: dict[str, int] = field(default_factory=dict)  # group key -> d_out of its Λb
    pairs: dict[str, tuple[int, int]] = field(default_factory=dict)  # pair -> (d_in, d_out)
    qasn_blocks: int = 0
    qasn_width: int = 0
    temporal_knots: int = 0  # K time codes (temporal.py); 0 = no temporal module
    temporal_width: int = 0  # Hv, the vision tokens' width

    @classmethod
    def build(cls, config: VcraConfig, sites: list[Site], fusion_blocks: int, fusion_width: int,
              vision_width: int = 0) -> "VcraLayout":
        layout = cls()
        dims: dict[str, tuple[int, int]] = {}
        for site in sites:  # pair dims over every site of the pair's modalities
            name = config.pair_of(site.modality)
            d_in, d_out = dims.get(name, (0, 0))
            dims[name] = (max(d_in, site.in_features), max(d_out, proj_out(site)))
        for site in sites:
            if site.modality in config.targets:
                for key in group_keys(site):
                    layout.groups[key] = proj_out(site)
                layout.pairs[config.pair_of(site.modality)] = dims[config.pair_of(site.modality)]
        missing = [m for m in config.targets if not any(s.modality == m for s in sites)]
        if missing:
            raise ValueError(f"targets {missing} are not in this backbone (it has {sorted({s.modality for s in sites})})")
        if config.qasn:
            if fusion_blocks == 0:
                raise ValueError("qasn needs the text encoder (fusion network), which this backbone lacks")
            layout.qasn_blocks, layout.qasn_width = fusion_blocks, fusion_width
            enc = config.pair_of("cross")  # the side network reads the fusion modules' pair
            layout.pairs.setdefault(enc, dims[enc])
        if config.temporal:
            if vision_width <= 0:
                raise ValueError("temporal needs the vision tokens' width")
            layout.temporal_knots, layout.temporal_width = TEMPORAL_KNOTS, vision_width
        return layout

    def trainable_count(self, rank: int, train_ab: bool) -> int:
        """Θ = [2·d·r per pair if A, B train] + Σ_groups (d_out + r) + 1 (s) + QASN blocks·(r + 3·d)
        + [temporal: (K + 2)·Hv, the time codes and the two motion vectors]."""
        pairs = sum(rank * (d_in + d_out) for d_in, d_out in self.pairs.values()) if train_ab else 0
        vectors = sum(d + rank for d in self.groups.values())
        qasn = self.qasn_blocks * (rank + 3 * self.qasn_width)
        return pairs + vectors + 1 + qasn + self.temporal_count()

    def temporal_count(self) -> int:
        return (self.temporal_knots + 2) * self.temporal_width if self.temporal_knots else 0
