"""Video default adapters through a real server on loopback: a request carrying a video
(/vqa video, /retrieve video query, inline videos, a video gallery) and naming no adapter
runs with `video-vqa` / `video-retrieval`; an image request keeps the image default; a
missing (or unfit) video default falls back to the image default, logged, not fatal."""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import tempfile
from pathlib import Path


from adapters.backbone import Backbone
from client import Client
from tests.test_server_harness import images, running_server, tiny_world, write_random_adapter
from tests.video_helpers import gif, moving_square_frames, mp4

CLIP = moving_square_frames(8, size=32)
TEXTS = {"a": "a red circle moves left", "b": "two green triangles"}
Q = "which way does the red circle move ?"


@functools.cache
def video_adapters() -> Path:
    """The video defaults as training makes them (--temporal), beside the tiny world's adapters."""
    root = Path(tempfile.mkdtemp(prefix="unitrans-video-adapters-"))
    atexit.register(shutil.rmtree, root, True)
    bb = Backbone.from_dirs(tiny_world() / "backbone")
    write_random_adapter(bb, root / "video-vqa.safetensors", "vcra-qasn", "vqa", seed=7, temporal=True)
    write_random_adapter(bb, root / "video-retrieval.safetensors", "vcra", "retrieve", seed=8, temporal=True)
    return root


def test_video_requests_use_the_video_defaults_image_requests_the_image_ones():
    world = tiny_world()
    with running_server(adapters=[world / "adapters", video_adapters()], video_num_frames=3) as url, \
            Client(url) as c:
        assert c.ready()["defaults"] == {"caption": "caption", "vqa": "vqa", "retrieve": "retrieval",
                                         "video-vqa": "video-vqa", "video-retrieve": "video-retrieval"}
        listed = {a["name"]: a for a in c.adapters()["adapters"]}
        assert listed["video-vqa"]["default_for"] == ["video-vqa"] and listed["video-vqa"]["pinned"]
        assert listed["video-retrieval"]["default_for"] == ["video-retrieve"] and listed["video-retrieval"]["pinned"]
        assert listed["vqa"]["default_for"] == ["vqa"]

        # /vqa: a video (multipart file or base64) runs the video default, the same as naming it
        data = mp4(CLIP)
        plain = c.vqa(None, Q, video=data, candidates=["left", "right"])
        assert plain["adapter"] == "video-vqa"
        assert plain == c.vqa(None, Q, video=data, candidates=["left", "right"], adapter="video-vqa")
        assert plain != c.vqa(None, Q, video=data, candidates=["left", "right"], adapter="vqa")
        assert c.vqa(None, Q, video=gif(CLIP), multipart=True)["adapter"] == "video-vqa"
        assert c.vqa(images(1)[0], Q)["adapter"] == "vqa"
        assert c.vqa(None, Q, video=data, adapter="vqa-b")["adapter"] == "vqa-b"  # a named one wins

        # /retrieve: video query, inline videos, a video gallery -> the video default
        assert c.retrieve(video=data, texts=TEXTS)["adapter"] == "video-retrieval"
        assert c.retrieve(image=images(1)[0], texts=TEXTS)["adapter"] == "retrieval"
        clips = {"red": data, "blue": gif(moving_square_frames(8, colour=(30, 30, 220), seed=2))}
        assert c.retrieve(text=TEXTS["a"], videos=clips)["adapter"] == "video-retrieval"
        assert c.retrieve(text=TEXTS["a"], images={"x": images(1)[0]})["adapter"] == "retrieval"
        c.create_gallery("clips", kind="video")
        c.add_items("clips", [{"id": k, "video": v} for k, v in clips.items()])
        assert c.gallery("clips")["adapters"] == ["video-retrieval"]  # vectors made by the video default
        hits = c.retrieve(text=TEXTS["a"], gallery="clips")
        assert hits["adapter"] == "video-retrieval" and hits["direction"] == "text_to_video"
        c.create_gallery("stills", kind="image")
        c.add_items("stills", [{"id": "x", "image": images(1)[0]}])
        assert c.gallery("stills")["adapters"] == ["retrieval"]
        assert c.retrieve(text=TEXTS["a"], gallery="stills")["adapter"] == "retrieval"


def test_a_missing_or_unfit_video_default_falls_back_to_the_image_default(caplog):
    caplog.set_level(logging.INFO, logger="unitrans.adapters")
    with running_server(default_video_vqa_adapter="absent", default_video_retrieve_adapter="caption",
                        video_num_frames=3) as url, Client(url) as c:
        # "absent" has no file (logged at start); "caption" is a caption adapter, unfit for retrieval
        assert c.ready()["defaults"]["video-vqa"] == "vqa"
        assert c.ready()["defaults"]["video-retrieve"] == "retrieval"
        data = mp4(CLIP)
        assert c.vqa(None, Q, video=data)["adapter"] == "vqa"
        assert c.retrieve(video=data, texts=TEXTS)["adapter"] == "retrieval"
        assert c.retrieve(text=TEXTS["a"], videos={"red": data})["adapter"] == "retrieval"
    assert any("default video-vqa adapter 'absent': no file" in r.getMessage() for r in caplog.records)
    # "none" as the video default: videos run on the frozen backbone, images keep their default
    with running_server(default_video_vqa_adapter="none", video_num_frames=3) as url, Client(url) as c:
        assert c.vqa(None, Q, video=mp4(CLIP))["adapter"] == "none"
        assert c.vqa(images(1)[0], Q)["adapter"] == "vqa"
