"""The tiny test world plus adapters that leave the vision tower frozen (no tests here).

    world = fanout_world()        # tiny_world()'s backbone and adapters + the *-text ones below
    metric(c.metrics(), "unitrans_image_cache_misses_total")
"""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import tempfile
from pathlib import Path

from adapters.backbone import Backbone
from tests.test_server_harness import tiny_world, write_random_adapter

# name -> (kind, task, targets): none of them targets "vision"
TEXT_ONLY = {
    "caption-text": ("vcra", "caption", ("decoder", "decoder_cross")),
    "caption-lora-text": ("lora", "caption", ("decoder", "decoder_cross")),
    "vqa-text": ("vcra", "vqa", ("text", "cross", "decoder", "decoder_cross")),
    "vqa-vlpet-text": ("vl-pet-small", "vqa", ("text", "cross", "decoder_cross")),
    "retrieval-text": ("vcra", "retrieve", ("text", "cross")),
}


def copy_world(src: Path) -> Path:
    """A private copy of a world's adapter directory (tests replace files in it), same backbone."""
    root = Path(tempfile.mkdtemp(prefix="unitrans-fanout-"))
    atexit.register(shutil.rmtree, root, True)
    (root / "backbone").symlink_to(src / "backbone")
    shutil.copytree(src / "adapters", root / "adapters")
    return root


@functools.cache
def fanout_world() -> Path:
    root = copy_world(tiny_world())
    bb = Backbone.from_dirs(root / "backbone")
    for i, (name, (kind, task, targets)) in enumerate(TEXT_ONLY.items()):
        write_random_adapter(bb, root / "adapters" / f"{name}.safetensors", kind, task, seed=500 + i, targets=targets)
    return root


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of Prometheus text (0 when absent)."""
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0
