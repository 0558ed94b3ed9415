"""With no --backbone the server serves the shipped `models/blip-shapes` and
`models/adapters`. Runs once those exist (issues 4 and 5 build them)."""

from __future__ import annotations

import pytest

from client import Client
from server.settings import DEFAULT_BACKBONE
from tests.test_server_harness import noise, png, running_server

pytestmark = pytest.mark.skipif(not (DEFAULT_BACKBONE / "config.json").is_file(),
                                reason="models/blip-shapes is not built yet (python -m training.shapes.pretrain)")


def test_default_backbone_and_adapters_serve_every_task(tmp_path):
    with running_server(backbone=[], adapters=[], shipped_adapters=True, data=tmp_path) as url, Client(url) as c:
        ready = c.ready()
        assert ready["backbone"] == "blip-shapes" and ready["tasks"] == ["caption", "retrieve", "vqa"]
        image = png(noise(64, seed=1))
        assert isinstance(c.caption(image)["caption"], str)
        assert isinstance(c.vqa(image, "how many shapes are there ?")["answer"], str)
        hits = c.retrieve(text="a red circle", images={"a": image, "b": png(noise(64, seed=2))}, top_k=2)
        assert len(hits["results"]) == 2
        listed = c.adapters()
        assert listed["backbone_fingerprint"] == ready["fingerprint"]
        for a in listed["adapters"]:
            assert a["error"] is None and a["backbone_fingerprint"] == ready["fingerprint"], a
