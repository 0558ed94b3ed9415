"""Two real server processes (uvicorn on loopback, tiny model) sharing one gallery URI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

from client import Client
from server.settings import ROOT
from tests.test_server_harness import images, tiny_world, wait_ready


@contextmanager
def replica(galleries, tmp):
    world = tiny_world()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNITRANS_TORCH_THREADS": "1", "UNITRANS_GALLERIES": str(galleries)}
    proc = subprocess.Popen([sys.executable, "-m", "server", "--backbone", str(world / "backbone"), "--adapters",
                             str(world / "adapters"), "--no-shipped-adapters", "--data", str(tmp), "--port", str(port), "--log-level", "warning"],
                            cwd=tmp, env=env, stderr=subprocess.PIPE, text=True)
    try:
        with Client(f"http://127.0.0.1:{port}", timeout=60) as c:
            wait_ready(c, proc, 120)
            yield c
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err, err


def test_two_replicas_share_one_gallery(tmp_path):
    imgs = images(40, seed=5)
    with ExitStack() as stack:
        a = stack.enter_context(replica(tmp_path / "shared", tmp_path))
        b = stack.enter_context(replica(tmp_path / "shared", tmp_path))
        a.create_gallery("g")
        a.add_items("g", [{"id": "first", "image": imgs[0], "metadata": {"by": "a"}}])
        hits = b.retrieve(text="two green triangles", gallery="g", top_k=3)["results"]
        assert [h["id"] for h in hits] == ["first"] and hits[0]["metadata"] == {"by": "a"}

        def add(args):
            c, name, i = args
            return c.add_items("g", [{"id": f"{name}{i}", "image": imgs[i]}])

        with ThreadPoolExecutor(8) as pool:  # 20 adds through each, at once
            list(pool.map(add, [(c, n, i) for i in range(1, 21) for c, n in ((a, "a"), (b, "b"))]))
        assert a.gallery("g")["size"] == b.gallery("g")["size"] == 41
        assert len({it["id"] for it in b.gallery_items("g")["items"]}) == 41

        a.delete_items("g", ["first"])
        assert b.gallery("g")["size"] == 40
        ids = [h["id"] for h in b.retrieve(text="two green triangles", gallery="g", top_k=40, rerank=False)["results"]]
        assert "first" not in ids and len(ids) == 40
