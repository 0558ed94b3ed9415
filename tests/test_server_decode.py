"""Request-side work off the model: images decoded in worker processes give exactly the
thread-pool answers and errors, and a slow client's upload never delays anyone's batch
(a real socket trickling its body while other requests are served)."""

from __future__ import annotations

import base64
import json
import socket
import time
from urllib.parse import urlparse

import pytest

from client import BadRequestError, Client
from tests.fanout_world import fanout_world
from tests.test_server_harness import images, running_server
from tests.video_helpers import moving_square_frames, mp4

ADAPTERS = ["none", "caption", "caption-text"]


def test_decode_processes_match_the_thread_pool():
    imgs = images(3, seed=31)
    clip = mp4(moving_square_frames(6))
    with running_server(fanout_world()) as url, Client(url) as c:
        threads = [c.caption(im, adapters=ADAPTERS) for im in imgs]
        inline = c.retrieve(text="a red circle", images={f"i{j}": im for j, im in enumerate(imgs)}, top_k=2)
        video = [c.vqa(None, "is there a star ?", video=clip, num_frames=3, multipart=m) for m in (False, True)]
    with running_server(fanout_world(), decode_workers=1) as url, Client(url) as c:
        assert [c.caption(im, adapters=ADAPTERS) for im in imgs] == threads
        assert c.retrieve(text="a red circle", images={f"i{j}": im for j, im in enumerate(imgs)}, top_k=2) == inline
        # a JSON body with a video is parsed by a worker, which leaves the video to the thread pool
        assert [c.vqa(None, "is there a star ?", video=clip, num_frames=3, multipart=m)
                for m in (False, True)] == video
        with pytest.raises(BadRequestError) as exc:
            c.caption(b"not an image at all")
        assert exc.value.type == "invalid_image" and "not an image" in exc.value.message


def _start_slow_upload(url: str, body: bytes) -> socket.socket:
    """Headers and the first half of a /caption body; the rest is sent later."""
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    head = (f"POST /caption HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    sock.sendall(head + body[: len(body) // 2])
    return sock


def test_a_slow_upload_never_delays_a_batch():
    image = images(1, seed=32)[0]
    body = json.dumps({"image": base64.b64encode(image).decode(), "adapter": "none"}).encode()
    with running_server(fanout_world(), max_wait_ms=20) as url, Client(url) as c:
        expected = c.caption(image, adapter="none")
        slow = _start_slow_upload(url, body)
        try:
            started = time.perf_counter()
            served = [c.caption(im, adapter="caption") for im in images(4, seed=33)]  # while it uploads
            elapsed = time.perf_counter() - started
            assert all(r["adapter"] == "caption" for r in served)
            assert elapsed < 5.0, f"requests waited {elapsed:.1f}s behind a slow upload"
            time.sleep(0.5)  # the slow client is still mid-body: nothing of it is queued
            slow.sendall(body[len(body) // 2 :])
            reply = b""
            while chunk := slow.recv(65536):
                reply += chunk
        finally:
            slow.close()
    status, _, payload = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), status
    assert json.loads(payload) == expected
