"""Galleries on LanceDB: kill -9 mid-add leaves old or new items, persistence and vectors per
adapter, indexed search against exact, metadata filters (hostile inputs too), migration."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from client import Client, ValidationError
from server.galleries import GalleryStore, item_key, space_columns
from server.gallery_filter import FilterError, compile_filter
from tests.test_server_harness import images, running_server

ROOT = Path(__file__).resolve().parents[1]
IMGS = images(5, seed=21)
COLS = space_columns("a1", "v1", "fp")

WRITER = r"""
import sys, numpy as np
from server.galleries import GalleryStore, item_key, space_columns
store = GalleryStore(sys.argv[1])
tbl = store.table("g") or store.create("g", "image")
cols = space_columns("a1", "v1", "fp")
rng = np.random.default_rng(int(sys.argv[2]))
print("ready", flush=True)
i = 0
while True:
    n = 2000 if i % 3 == 2 else int(rng.integers(1, 6))   # every third add is a large one
    rows = []
    for j in range(n):
        item_id = f"item{int(rng.integers(0, 40))}" if n < 10 else f"big{i}-{j}"
        blob = rng.bytes(int(rng.integers(2000, 20000)))
        rows.append({"id": item_id, "key": item_key(item_id, blob), "image": blob, "metadata": {"i": i}})
    rows = list({r["id"]: r for r in rows}.values())
    store.add(tbl, rows, cols, rng.normal(size=(len(rows), 16)).astype(np.float32))
    if rng.random() < 0.2:
        store.remove(tbl, [f"item{int(rng.integers(0, 40))}"])
    i += 1
"""


def _check_consistent(data: Path) -> int:
    store = GalleryStore(data)
    tbl = store.table("g")
    rows = tbl.to_arrow().to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    bigs = {}
    for r in rows:
        assert r["key"] == item_key(r["id"], r["image"]), "an item's bytes are whole"
        assert r[COLS[0]] == r["key"] and len(r[COLS[1]]) == 16, "items and their vectors land in one commit"
        if r["id"].startswith("big"):
            bigs[r["id"].split("-")[0]] = bigs.get(r["id"].split("-")[0], 0) + 1
    assert all(n == 2000 for n in bigs.values()), f"a large add is all or nothing: {bigs}"
    return len(ids)


def test_kill_9_mid_add_leaves_the_old_or_the_new_items():
    data = Path(tempfile.mkdtemp(prefix="unitrans-kill-"))
    sizes = []
    for round_, delay in enumerate([0.3, 0.7, 1.1, 0.5, 1.5, 0.9]):
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
        assert c.gallery("shapes")["adapters"] == ["retrieval", "retrieval-b"]
    assert (data / "lancedb" / "shapes.lance").is_dir()
    with running_server(data=data) as url, Client(url) as c:
        assert c.gallery("shapes")["size"] == 5
        assert c.retrieve(text="one yellow star", gallery="shapes", top_k=3) == first
        assert c.retrieve(text="one yellow star", gallery="shapes", top_k=3, adapter="retrieval-b") == first_b


def test_indexed_search_finds_what_exact_search_finds():
    rng = np.random.default_rng(0)
    store = GalleryStore(Path(tempfile.mkdtemp(prefix="unitrans-ivf-")) / "db")
    centres = rng.normal(size=(20, 32))
    vecs = (centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 32))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    tbl = store.create("g", "text")
    rows = [{"id": f"t{i}", "key": f"k{i}", "text": f"text {i}", "metadata": {"shard": i % 3}} for i in range(3000)]
    store.add(tbl, rows, COLS, vecs)
    store.build_index(tbl, COLS[1])
    assert store.info(tbl)["index"] == "ivf_pq" and store.info(tbl)["indexed"] == ["a1"]
    recall = []
    for qv in vecs[rng.integers(0, 3000, 20)] + 0.1 * rng.normal(size=(20, 32)).astype(np.float32):
        qv /= np.linalg.norm(qv)
        exact = store.search(tbl, COLS, qv, 10, exact=True)
        approx = store.search(tbl, COLS, qv, 10)
        recall.append(len({r["id"] for r, _ in exact} & {r["id"] for r, _ in approx}) / 10)
        sims = vecs @ qv
        assert [s for _, s in exact] == pytest.approx(np.sort(sims)[::-1][:10], abs=1e-5)
        shard = store.search(tbl, COLS, qv, 10, where=compile_filter({"metadata.shard": 1}))
        assert shard and all(r["metadata"]["shard"] == 1 for r, _ in shard)
    assert np.mean(recall) >= 0.9


FILTERS = [  # (filter, ids of the gallery below it keeps)
    ({"metadata.colour": "red"}, ["a", "c"]),
    ({"metadata.n": {"$gte": 2}}, ["b", "c", "e"]),
    ({"metadata.n": 1}, ["a"]),
    ({"metadata.n": "1"}, []),                       # typed: the string "1" is not the number 1
    ({"metadata.colour": {"$in": ["red", "blue"]}}, ["a", "b", "c"]),
    ({"metadata.colour": {"$ne": "red"}}, ["b", "d", "e"]),  # $ne keeps items without the key
    ({"$or": [{"metadata.n": 1}, {"id": "e"}]}, ["a", "e"]),
    ({"$not": {"metadata.colour": "red"}}, ["b", "d", "e"]),
    ({"metadata.sub.x": "y"}, ["c"]),
    ({"metadata.ok": True}, ["a"]),
    ({"metadata.colour": {"$exists": False}}, ["d"]),
    ({"metadata.colour": "x' OR '1'='1"}, []),         # quotes are data, never SQL
    ({"id": "a') OR true OR ('"}, []),
    ({"metadata.colour": "it's \"quoted\" \\ é"}, ["e"]),
]
HOSTILE = [
    {"metadata.colour') OR true --": "x"}, {"metadata.a`b": 1}, {"metadata.": 1}, {"key": "x"}, {"image": "x"},
    {"metadata.n": {"$regex": ".*"}}, {"metadata.n": {"$gt": "1"}}, {"metadata.n": None}, {"$where": "1=1"},
    {"metadata.n": {"$in": []}}, {"metadata.n": [1, 2]}, {"metadata.a.b.c.d.e": 1}, {}, {"$or": {}},
    {"metadata.n": {"$gt": float("inf")}}, {"id": {"$gt": "a"}}, {"metadata.x": "\ud800"},
]


@pytest.mark.parametrize("spec,keep", FILTERS)
def test_filters_select_by_metadata(spec, keep, filter_gallery):
    store, tbl = filter_gallery
    got = store.search(tbl, COLS, np.ones(4, np.float32) / 2, 10, where=compile_filter(spec))
    assert sorted(r["id"] for r, _ in got) == keep


@pytest.mark.parametrize("spec", HOSTILE)
def test_hostile_filters_are_refused_by_name(spec):
    with pytest.raises(FilterError):
        compile_filter(spec)


@pytest.fixture(scope="module")
def filter_gallery():
    store = GalleryStore(Path(tempfile.mkdtemp(prefix="unitrans-filter-")) / "db")
    tbl = store.create("g", "text")
    md = {"a": {"colour": "red", "n": 1, "ok": True}, "b": {"colour": "blue", "n": 2},
          "c": {"colour": "red", "n": 3, "sub": {"x": "y"}}, "d": {}, "e": {"colour": "it's \"quoted\" \\ é", "n": 2.5}}
    store.add(tbl, [{"id": i, "key": i, "text": i, "metadata": m} for i, m in md.items()], COLS,
              np.ones((5, 4), np.float32) / 2)
    return store, tbl


def test_filter_through_the_server_and_its_422():
    with running_server() as url, Client(url) as c:
        c.create_gallery("f")
        c.add_items("f", [{"id": f"s{i}", "image": im, "metadata": {"colour": ["red", "blue"][i % 2]}}
                          for i, im in enumerate(IMGS)])
        hits = c.retrieve(text="two green triangles", gallery="f", top_k=5, filter={"metadata.colour": "red"})
        assert sorted(h["id"] for h in hits["results"]) == ["s0", "s2", "s4"]
        for bad, word in [({"metadata.colour') OR 1=1 --": "x"}, "metadata keys"), ({"metadata.n": {"$regex": 1}},
                                                                                   "$regex")]:
            with pytest.raises(ValidationError) as err:
                c.retrieve(text="a", gallery="f", filter=bad)
            assert err.value.message.startswith("filter:") and word in err.value.message
        assert c.gallery("f")["size"] == 5  # the hostile filter changed nothing


def test_migrate_imports_galleries_written_by_the_old_store(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / "v1-galleries", old / "galleries")
    out = subprocess.run([sys.executable, "-m", "server.galleries", "migrate", str(old), "--galleries",
                          str(tmp_path / "db")], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "shapes: 3 image items" in out.stdout and "words: 3 text items" in out.stdout
    with running_server(galleries=str(tmp_path / "db")) as url, Client(url) as c:
        shapes = c.gallery("shapes")
        assert shapes["kind"] == "image" and shapes["size"] == 3
        assert set(shapes["adapters"]) >= {"retrieval", "retrieval-b"}
        items = c.gallery_items("shapes")["items"]
        assert [(i["id"], i["metadata"]) for i in items] == [
            ("s0", {"colour": "red", "n": 0}), ("s1", {"colour": "green", "n": 9}), ("s2", {"colour": "red", "n": 2})]
        hits = c.retrieve(text="one yellow star", gallery="shapes", top_k=3)["results"]
        assert sorted(h["id"] for h in hits) == ["s0", "s1", "s2"]
        assert [i["text"] for i in c.gallery_items("words")["items"]] == [
            "a red circle", "two green triangles", "one yellow star"]


def test_bench_runs_on_a_tiny_size(capsys):
    from bench import galleries

    [r] = galleries.main(["--sizes", "600", "--dim", "16", "--queries", "5", "--batch", "300"])
    assert r["n"] == 600 and 0 <= r["recall10"] <= 1 and r["bytes_per_item"] > 64
    assert "| 600 |" in capsys.readouterr().out


def test_a_new_adapters_vectors_are_filled_in_chunks_without_flooding_the_queue():
    texts = [f"{n} {c} {s}" for n in ("one", "two", "three") for c in ("red", "blue", "green", "yellow")
             for s in ("circle", "square", "star", "triangles")] * 7  # 336 items
    with running_server(queue_size=3, max_batch_size=8) as url, Client(url) as c:
        c.create_gallery("many", kind="text")
        for start in range(0, len(texts), 168):
            c.add_items("many", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts[start:start + 168], start)],
                        adapter="none")
        hits = c.retrieve(image=IMGS[0], gallery="many", top_k=5, adapter="retrieval-b", rerank=False)["results"]
        assert len(hits) == 5 and c.gallery("many")["adapters"] == ["none", "retrieval-b"]
        inline = c.retrieve(image=IMGS[0], texts={h["id"]: texts[int(h["id"][1:])] for h in hits}, top_k=5,
                            adapter="retrieval-b", rerank=False)["results"]
        assert [h["itc"] for h in inline] == pytest.approx([h["itc"] for h in hits], abs=1e-5)
        # a replaced item's retrieval-b vector is stale at once and recomputed by the next search
        c.add_items("many", [{"id": hits[0]["id"], "text": "one yellow star"}], adapter="none")
        again = c.retrieve(image=IMGS[0], texts={"x": "one yellow star"}, top_k=1, adapter="retrieval-b", rerank=False)
        found = c.retrieve(image=IMGS[0], gallery="many", top_k=5, adapter="retrieval-b", rerank=False,
                           filter={"id": hits[0]["id"]})["results"]
        assert [h["itc"] for h in found] == pytest.approx(
            [again["results"][0]["itc"]], abs=1e-5)
