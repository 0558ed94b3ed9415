"""Import galleries of the old on-disk format into the LanceDB store (`python -m server.galleries migrate`).

    <old>/galleries/<name>/manifest.json    {"name", "kind", "items": [{"id", "key", "blob" | "text", "metadata"}]}
    <old>/galleries/<name>/blobs/<key>.png
    <old>/galleries/<name>/vectors/<adapter>.npz   keys, (n, D) matrix, version, fingerprint

Items keep their ids, keys, metadata and content; stored vectors come along in their space
(same adapter version and backbone fingerprint: still current when those are unchanged,
else recomputed at the first search as for any stale space). A gallery that already
exists in the store is skipped, so a migration can be rerun after an interruption (each
gallery's items land in one commit).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from server.galleries import GalleryExists, GalleryStore, space_columns


def migrate(old_data_dir, store: GalleryStore):
    root = Path(old_data_dir) / "galleries"
    manifests = sorted(root.glob("*/manifest.json"))
    if not manifests:
        raise SystemExit(f"no galleries of the old format under {root}")
    for manifest in manifests:
        body = json.loads(manifest.read_text())
        name, kind, items = body["name"], body["kind"], body["items"]
        try:
            tbl = store.create(name, kind)
        except GalleryExists:
            yield f"{name}: already in {store.uri}, skipped"
            continue
        gdir = manifest.parent
        rows = [{"id": it["id"], "key": it["key"], "metadata": it.get("metadata") or {},
                 "image": (gdir / "blobs" / it["blob"]).read_bytes() if kind == "image" else None,
                 "text": it.get("text")} for it in items]
        spaces = []
        for npz in sorted((gdir / "vectors").glob("*.npz")):
            with np.load(npz, allow_pickle=False) as z:
                keys, matrix = [str(k) for k in z["keys"]], z["matrix"].astype(np.float32)
                spaces.append((npz.stem, str(z["version"]), str(z["fingerprint"]), dict(zip(keys, matrix))))
        labels = [s[0] for s in spaces]
        if rows:  # the items in one commit (with the first space's vectors if it covers them all)
            first = spaces[0] if spaces and all(r["key"] in spaces[0][3] for r in rows) else None
            if first:
                store.add(tbl, rows, space_columns(*first[:3]), np.stack([first[3][r["key"]] for r in rows]))
                spaces = spaces[1:]
            else:
                store.add(tbl, rows, None, None)
        for label, version, fp, by_key in spaces:
            rs = [r for r in rows if r["key"] in by_key]
            if rs:
                store.put_vectors(tbl, space_columns(label, version, fp), [r["id"] for r in rs],
                                  [r["key"] for r in rs], np.stack([by_key[r["key"]] for r in rs]))
        yield f"{name}: {len(rows)} {kind} items, vectors of {', '.join(labels) or 'no adapter'}"
