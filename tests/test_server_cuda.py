"""`device="cuda"` end to end through a real server: fan-out rows equal single requests and
the image-feature cache works on the GPU. Skipped (cleanly, with the reason) without CUDA."""

from __future__ import annotations

import pytest
import torch

from client import Client
from tests.fanout_world import fanout_world, metric
from tests.test_server_harness import images, running_server
from tests.test_server_mixed import _same

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_fanout_and_cache_on_cuda():
    image = images(1, seed=41)[0]
    caption, vqa = ["none", "caption", "caption-text"], ["vqa", "vqa-text", "none"]
    with running_server(fanout_world(), device="cuda") as url, Client(url) as c:
        assert c.ready()["ready"]
        fan = c.caption(image, adapters=caption)["per_adapter"]
        assert fan == [c.caption(image, adapter=a) for a in caption]
        ask = dict(question="what colour is the circle ?", candidates=["red", "two", "yes"])
        _same(c.vqa(image, adapters=vqa, **ask)["per_adapter"], [c.vqa(image, adapter=a, **ask) for a in vqa])
        assert metric(c.metrics(), "unitrans_image_cache_hits_total") > 0
