"""Galleries: persisted across restarts, consistent after kill -9 in the middle of
adds, and the faiss index answers like exact search."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from client import Client
from server.galleries import GalleryStore
from tests.test_server_harness import images, running_server

ROOT = Path(__file__).resolve().parents[1]
IMGS = images(5, seed=21)

WRITER = r"""
import sys, numpy as np
from server.galleries import GalleryStore, item_key
store = GalleryStore(sys.argv[1], faiss_threshold=10**9)
g = store.get("g") or store.create("g", "image")
rng = np.random.default_rng(int(sys.argv[2]))
print("ready", flush=True)
i = 0
while True:
    n = int(rng.integers(1, 6))
    entries, blobs, keys = [], {}, []
    for _ in range(n):
        item_id = f"item{int(rng.integers(0, 40))}"   # re-adding an id replaces it
        blob = rng.bytes(int(rng.integers(2000, 40000)))
        key = item_key(item_id, blob)
        blobs[key + ".png"] = blob
        entries.append({"id": item_id, "key": key, "blob": key + ".png", "metadata": {"i": i}})
        keys.append(key)
    vecs = rng.normal(size=(len(keys), 16)).astype(np.float32)
    g.add(entries, blobs, ("a1", "v1", "fp", keys, vecs))
    if rng.random() < 0.2:
        g.remove([f"item{int(rng.integers(0, 40))}"])
    i += 1
"""


def _check_consistent(data: Path) -> int:
    store = GalleryStore(data, faiss_threshold=10**9)
    g = store.get("g")
    assert g is not None
    ids = g.ids
    assert len(ids) == len(set(ids))
    for it in g.items:
        assert (g.root / "blobs" / it["blob"]).is_file(), it  # every referenced blob is complete
        assert len(g.blob(it)) >= 2000
    vec = g.load_vectors("a1", "v1", "fp")
    if vec is not None:
        assert vec.matrix.shape == (len(vec.keys), 16)
        missing = g.missing("a1", "v1", "fp")
        assert missing == [], "vectors are written before the manifest, so every item has one"
    json.loads((g.root / "manifest.json").read_text())
    return len(ids)


def test_kill_9_mid_add_leaves_a_consistent_gallery():
    data = Path(tempfile.mkdtemp(prefix="unitrans-kill-"))
    sizes = []
    for round_, delay in enumerate([0.05, 0.13, 0.21, 0.34, 0.5, 0.08, 0.17, 0.26, 0.41, 0.11]):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data), str(round_)], cwd=ROOT,
                                stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        sizes.append(_check_consistent(data))
    assert max(sizes) > 0


def test_persisted_across_restart_and_vectors_per_adapter():
    data = Path(tempfile.mkdtemp(prefix="unitrans-persist-"))
    with running_server(data=data) as url, Client(url) as c:
        c.create_gallery("shapes")
        c.add_items("shapes", [{"id": f"s{i}", "image": im, "metadata": {"i": i}} for i, im in enumerate(IMGS)])
        first = c.retrieve(text="one yellow star", gallery="shapes", top_k=3)
        first_b = c.retrieve(text="one yellow star", gallery="shapes", top_k=3, adapter="retrieval-b")
    assert sorted(p.name for p in (data / "galleries" / "shapes" / "vectors").iterdir()) == [
        "retrieval-b.npz", "retrieval.npz"]
    with running_server(data=data) as url, Client(url) as c:
        assert c.gallery("shapes")["size"] == 5
        assert c.retrieve(text="one yellow star", gallery="shapes", top_k=3) == first
        assert c.retrieve(text="one yellow star", gallery="shapes", top_k=3, adapter="retrieval-b") == first_b


def test_faiss_index_matches_exact_search():
    rng = np.random.default_rng(0)
    data = Path(tempfile.mkdtemp(prefix="unitrans-faiss-"))
    exact, approx = GalleryStore(data / "e", faiss_threshold=10**9), GalleryStore(data / "f", faiss_threshold=50)
    vecs = rng.normal(size=(300, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    entries = [{"id": f"t{i}", "key": f"k{i}", "text": f"text {i}", "metadata": {}} for i in range(300)]
    for store in (exact, approx):
        g = store.create("g", "text")
        g.add(entries, {}, ("a", "v", "fp", [e["key"] for e in entries], vecs))
    assert exact.index_kind(exact.get("g")) == "exact" and approx.index_kind(approx.get("g")) == "faiss-hnsw"
    for q in rng.normal(size=(10, 32)).astype(np.float32):
        q /= np.linalg.norm(q)
        a = exact.search(exact.get("g"), "a", "v", "fp", q, 5)
        b = approx.search(approx.get("g"), "a", "v", "fp", q, 5)
        assert [it["id"] for it, _ in a] == [it["id"] for it, _ in b]
        assert [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-5)


def test_faiss_through_the_server():
    with running_server(faiss_threshold=3) as url, Client(url) as c:
        c.create_gallery("big")
        c.add_items("big", [{"id": f"b{i}", "image": im} for i, im in enumerate(IMGS)])
        assert c.gallery("big")["index"] == "faiss-hnsw"
        inline = c.retrieve(text="two green triangles", images={f"b{i}": im for i, im in enumerate(IMGS)}, top_k=4)
        hnsw = c.retrieve(text="two green triangles", gallery="big", top_k=4)
        assert [h["id"] for h in hnsw["results"]] == [h["id"] for h in inline["results"]]


def test_large_gallery_vectors_are_computed_in_chunks_without_flooding_the_queue():
    texts = [f"{n} {c} {s}" for n in ("one", "two", "three") for c in ("red", "blue", "green", "yellow")
             for s in ("circle", "square", "star", "triangles")] * 7  # 336 items
    with running_server(queue_size=3, max_batch_size=8) as url, Client(url) as c:
        c.create_gallery("many", kind="text")
        for start in range(0, len(texts), 168):
            c.add_items("many", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts[start:start + 168], start)],
                        adapter="none")
        hits = c.retrieve(image=IMGS[0], gallery="many", top_k=5, adapter="retrieval-b", rerank=False)["results"]
        assert len(hits) == 5 and c.gallery("many")["adapters"] == ["none", "retrieval-b"]
        # the same five, scored inline, agree with the gallery's stored vectors
        inline = c.retrieve(image=IMGS[0], texts={h["id"]: texts[int(h["id"][1:])] for h in hits}, top_k=5,
                            adapter="retrieval-b", rerank=False)["results"]
        assert [h["itc"] for h in inline] == pytest.approx([h["itc"] for h in hits], abs=1e-5)
