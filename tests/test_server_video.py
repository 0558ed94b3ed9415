"""Video through a real server on loopback: MP4, WebM and animated GIF files made here with
PyAV and PIL, as multipart files, base64 files and frame lists, on /vqa and /retrieve and in
video galleries; a catalogue of bad videos, each a clear 4xx, the server serving after."""

from __future__ import annotations

import base64
import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from client import Client
from tests.test_server_mixed import _same
from tests.test_server_harness import alone_then_together, images, running_server
from tests.video_helpers import gif, moving_square_frames, mp4, webm, webm_no_frames

LIMITS = dict(max_video_seconds=3.0, max_video_pixels=64 * 64, max_video_bytes=40_000, max_video_num_frames=6,
              video_num_frames=3, max_video_list_frames=12)


@pytest.fixture(scope="module")
def url():
    with running_server(**LIMITS) as u:
        yield u


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


CLIP = moving_square_frames(12, size=32)


def test_video_vqa_in_every_form_gives_one_answer(url):
    """The same clip as MP4 multipart, MP4 base64 and as its frames sampled the same way
    (12 frames -> 3: indices 2, 6, 10) gets the same answer; WebM and GIF are decoded too."""
    with Client(url) as c:
        data = mp4(CLIP)  # encoded once: x264's bytes differ between encodings of one clip
        multipart = c.vqa(None, "what colour is the circle ?", video=data, num_frames=3, multipart=True)
        as_b64 = c.vqa(None, "what colour is the circle ?", video=data, num_frames=3)
        assert multipart == as_b64 and multipart["answer"] and multipart["adapter"] == "vqa"
        frames = [_png(CLIP[i]) for i in (2, 6, 10)]
        listed = c.vqa(None, "what colour is the circle ?", video=frames, num_frames=3)
        lossless = [_png(CLIP[i]) for i in range(12)]
        assert c.vqa(None, "what colour is the circle ?", video=lossless, num_frames=3) == listed
        for data in (webm(CLIP), gif(CLIP)):
            assert c.vqa(None, "is there a star ?", video=data, num_frames=4, multipart=True)["answer"]
        ranked = c.vqa(None, "is there a star ?", video=gif(CLIP), candidates=["yes", "no"])
        assert set(ranked["scores"]) == {"yes", "no"}


def test_frame_count_changes_the_input(url):
    """1, 3 and 6 frames are different inputs (ITC vectors differ); a 1-frame list equals the image."""
    with Client(url) as c:
        frame = _png(CLIP[5])
        texts = {"a": "a red circle left of a blue square", "b": "two green triangles"}
        as_image = c.retrieve(image=frame, texts=texts, rerank=False)
        as_video = c.retrieve(video=[frame], texts=texts, rerank=False, num_frames=1)
        assert as_video["direction"] == "video_to_text" and as_image["direction"] == "image_to_text"
        assert [(h["id"], round(h["itc"], 5)) for h in as_video["results"]] == \
            [(h["id"], round(h["itc"], 5)) for h in as_image["results"]]
        data = mp4(CLIP)
        itc = {n: c.retrieve(video=data, texts=texts, rerank=False, num_frames=n)["results"][0]["itc"]
               for n in (1, 3, 6)}
        assert len(set(itc.values())) == 3


def test_text_to_video_inline_and_gallery(url):
    clips = {"red": mp4(moving_square_frames(8, colour=(220, 30, 30))),
             "green": webm(moving_square_frames(8, colour=(30, 200, 30), seed=1)),
             "blue": gif(moving_square_frames(8, colour=(30, 30, 220), seed=2))}
    with Client(url) as c:
        inline = c.retrieve(text="a red circle", videos=clips, top_k=3)
        assert inline["direction"] == "text_to_video" and len(inline["results"]) == 3
        c.create_gallery("clips", kind="video")
        added = c.add_items("clips", [{"id": k, "video": v, "metadata": {"colour": k}} for k, v in clips.items()])
        assert sorted(added["added"]) == ["blue", "green", "red"]
        assert c.gallery("clips")["kind"] == "video"
        hits = c.retrieve(text="a red circle", gallery="clips", top_k=3)
        assert hits["direction"] == "text_to_video"
        # the gallery stores the frames it sampled (3, the server default), so scores equal the inline ones
        assert {h["id"]: round(h["score"], 4) for h in hits["results"]} == \
            {h["id"]: round(h["score"], 4) for h in inline["results"]}
        only = c.retrieve(text="a red circle", gallery="clips", filter={"metadata.colour": "green"})
        assert [h["id"] for h in only["results"]] == ["green"]
        with pytest.raises(Exception) as exc:
            c.retrieve(video=mp4(CLIP), gallery="clips")
        assert exc.value.status == 422 and "text gallery" in exc.value.message
        with pytest.raises(Exception) as exc:
            c.add_items("clips", [{"id": "x", "image": images(1)[0]}])
        assert exc.value.status == 422 and "video" in exc.value.message


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 3]


BIG = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
# (name, multipart file bytes or a JSON "video" value, extra fields, status, error type, words in the message)
BAD = [
    ("truncated mp4", _cut(mp4(CLIP)), {}, 400, "invalid_video", "truncated"),
    ("truncated gif", gif(CLIP)[:-150], {}, 400, "invalid_video", "truncated GIF"),
    ("zero frames", webm_no_frames(), {}, 400, "invalid_video", "zero frames"),
    ("empty file", b"", {}, 400, "invalid_video", "zero bytes"),
    ("png as video", images(1)[0], {}, 400, "invalid_video", "not an accepted video container"),
    ("random bytes", np.random.default_rng(1).bytes(3000), {}, 400, "invalid_video", "corrupt"),
    ("too long", mp4(moving_square_frames(50), fps=10), {}, 413, "payload_too_large", "over the limit of 3 s"),
    ("too many pixels", mp4([BIG] * 4), {}, 413, "payload_too_large", "pixels per frame"),
    ("too many bytes", np.random.default_rng(2).bytes(50_000), {}, 413, "payload_too_large", "bytes"),
    ("too many frames asked", mp4(CLIP), {"num_frames": "7"}, 422, "unprocessable", "num_frames"),
    ("frame list: a bad frame", [_b64(b"not a png")], {}, 400, "invalid_image", "video[0]"),
    ("frame list: empty", [], {}, 400, "invalid_video", "empty frame list"),
    ("frame list: too long", [_b64(_png(CLIP[0]))] * 13, {}, 413, "payload_too_large", "13 frames"),
    ("image and video", mp4(CLIP), {"image": _b64(images(1)[0])}, 422, "unprocessable", "exactly one"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_video_is_a_clear_4xx_and_the_server_keeps_serving(url, case):
    name, video, extra, status, kind, words = case
    fields = {"question": "is there a star ?", **extra}
    if isinstance(video, bytes):
        r = httpx.post(url + "/vqa", data=fields, files={"video": ("clip", video)}, timeout=60)
    else:
        r = httpx.post(url + "/vqa", json={**fields, "video": video}, timeout=60)
    assert r.status_code == status, (name, r.status_code, r.text)
    err = r.json()["error"]
    assert err["type"] == kind and words in err["message"], (name, err)
    if isinstance(video, bytes) and status != 422:  # the same refusal through /retrieve's JSON
        r = httpx.post(url + "/retrieve", json={"video": _b64(video), "texts": [{"id": "a", "text": "two"}]},
                       timeout=60)
        assert r.status_code == status and r.json()["error"]["type"] == kind, (name, r.text)
    with Client(url) as c:  # still serving
        assert c.vqa(None, "is there a star ?", video=gif(CLIP))["answer"]


def test_cli_sends_videos(url, tmp_path):
    from client.__main__ import main as cli

    clip = tmp_path / "clip.gif"
    clip.write_bytes(gif(CLIP))
    assert cli(["--url", url, "vqa", str(clip), "what colour is the circle ?", "--video", "--num-frames", "2"]) == 0
    assert cli(["--url", url, "gallery", "create", "cli-clips", "--kind", "video"]) == 0
    assert cli(["--url", url, "gallery", "add", "cli-clips", str(clip), "--videos"]) == 0
    assert cli(["--url", url, "retrieve", "--video", str(clip), "--texts", "one red circle", "two"]) == 0
    with Client(url) as c:
        assert c.gallery("cli-clips")["size"] == 1


def test_video_gallery_persists_across_a_restart(tmp_path):
    clips = {"red": mp4(moving_square_frames(8, colour=(220, 30, 30))),
             "blue": gif(moving_square_frames(8, colour=(30, 30, 220), seed=2))}
    with running_server(data=tmp_path, **LIMITS) as u, Client(u) as c:
        c.create_gallery("kept", kind="video")
        c.add_items("kept", [{"id": k, "video": v} for k, v in clips.items()])
        before = c.retrieve(text="a red circle", gallery="kept", top_k=2)["results"]
    with running_server(data=tmp_path, **LIMITS) as u, Client(u) as c:
        info = c.gallery("kept")
        assert info["kind"] == "video" and info["size"] == 2 and info["adapters"] == ["retrieval"]
        after = c.retrieve(text="a red circle", gallery="kept", top_k=2)["results"]
        other = c.retrieve(text="a red circle", gallery="kept", top_k=2, adapter="retrieval-b")["results"]
    assert before == after  # stored frames and vectors, read back by a new process
    assert {h["id"] for h in other} == {"red", "blue"}  # another adapter's vectors from the stored frames


def test_concurrent_video_requests_of_mixed_adapters_and_frame_counts_match_one_by_one():
    """Video VQA (generated and ranked) and video ITC/ITM, naming different adapters, with 2
    and 4 frames, sent at once beside image requests: each answer equals the request alone,
    and the video rows really shared batches."""

    clips = [gif(moving_square_frames(6 + i, colour=c, seed=i)) for i, c in
             enumerate([(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 30)])]
    adapters = [None, "none", "vqa", "vqa-b", "vqa-vlpet", "vqa-lora"]
    reqs = []
    for i in range(12):
        clip, n = clips[i % 4], (2, 4)[i % 2]
        reqs.append(("vqa", dict(image=None, question="what colour is the circle ?", video=clip, num_frames=n,
                                 adapter=adapters[i % 6])))
        if i % 3 == 0:
            reqs.append(("vqa", dict(image=None, question="is there a star ?", video=clip, num_frames=n,
                                     candidates=["yes", "no"], adapter=adapters[(i + 1) % 6])))
            reqs.append(("vqa", dict(image=images(1, seed=i)[0], question="is there a star ?")))
            reqs.append(("retrieve", dict(video=clip, num_frames=n, texts={"a": "red", "b": "two green triangles"},
                                          adapter=["retrieval", "retrieval-b"][i % 2])))
    with running_server(max_wait_ms=40, max_batch_size=16, **LIMITS) as u:
        alone, mixed = alone_then_together(u, reqs)
        with Client(u) as c:
            metrics = c.metrics()
    for i, (a, m) in enumerate(zip(alone, mixed)):
        _same(a, m, f"request {i} {reqs[i][0]}")
    # adapters really change video answers (else equality proves little)
    answers = {r["answer"] for (name, kw), r in zip(reqs, alone)
               if name == "vqa" and kw.get("video") and "candidates" not in kw}
    assert len(answers) >= 3, answers
    # batches run: one per request one by one, then fewer than one per request together
    batches = {m.group(1): float(m.group(2))
               for m in re.finditer(r'unitrans_batch_size_count\{task="(\w+)"\} (\S+)', metrics)}
    n_vqa = sum(name == "vqa" for name, _ in reqs)
    assert batches["vqa"] - n_vqa <= n_vqa - 5, (batches, n_vqa)


def test_decoding_runs_off_the_model_worker(url, monkeypatch):
    """A spy around the real decoder records its thread: the request pool, never 'unitrans-model'.
    While a video decodes slowly, an image request is answered."""
    import threading
    import time

    from server import videos

    threads, real = [], videos.decode_video

    def slow_spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        time.sleep(1.0)  # a long decode
        return real(*args, **kwargs)

    monkeypatch.setattr(videos, "decode_video", slow_spy)
    with Client(url) as c:
        done = {}
        t = threading.Thread(target=lambda: done.setdefault("video", c.vqa(None, "is there a star ?", video=mp4(CLIP))))
        t.start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        assert c.vqa(images(1)[0], "is there a star ?")["answer"]
        assert time.perf_counter() - t0 < 0.8  # not queued behind the decode
        t.join()
    assert done["video"]["answer"] and threads and not any(n.startswith("unitrans-model") for n in threads)


def test_video_limits_are_settings_and_env(monkeypatch):
    from pydantic import ValidationError

    from server.settings import Settings

    monkeypatch.setenv("UNITRANS_MAX_VIDEO_NUM_FRAMES", "4")
    monkeypatch.setenv("UNITRANS_VIDEO_NUM_FRAMES", "2")
    monkeypatch.setenv("UNITRANS_MAX_VIDEO_SECONDS", "9.5")
    s = Settings()
    assert (s.max_video_num_frames, s.video_num_frames, s.max_video_seconds) == (4, 2, 9.5)
    with pytest.raises(ValidationError, match="video_num_frames"):
        Settings(video_num_frames=8, max_video_num_frames=4)


def test_gallery_items_stored_at_another_frame_count_are_resampled(tmp_path):
    """A restart with another video_num_frames: old items (3 frames) and new ones (2) search together."""
    with running_server(data=tmp_path, **LIMITS) as u, Client(u) as c:
        c.create_gallery("mixed", kind="video")
        c.add_items("mixed", [{"id": "old", "video": gif(CLIP)}])
    with running_server(data=tmp_path, **{**LIMITS, "video_num_frames": 2}) as u, Client(u) as c:
        c.add_items("mixed", [{"id": "new", "video": mp4(CLIP)}])
        hits = c.retrieve(text="a red circle", gallery="mixed", top_k=2)["results"]
        assert {h["id"] for h in hits} == {"old", "new"}
        fresh = c.retrieve(text="a red circle", gallery="mixed", top_k=2, adapter="retrieval-b")["results"]
        assert {h["id"] for h in fresh} == {"old", "new"}  # vectors computed now from the stored frames
