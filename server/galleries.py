"""Retrieval galleries persisted under `<data>/galleries/<name>/`, crash-consistent.

    <name>/manifest.json        {"name", "kind": "image"|"text", "items": [{"id", "key", "blob"|"text", "metadata"}]}
    <name>/blobs/<sha256>.png   each image, decoded once and stored as PNG
    <name>/vectors/<adapter>.npz  ITC vectors computed with that adapter: item keys, (n, D) float32,
                                the adapter's version and the backbone fingerprint

The manifest is the truth. Every file is written to a temp file, fsynced and
`os.replace`d; an add writes blobs, then vectors, then the manifest, so a kill -9
at any instant leaves the previous or the next manifest, each referring only to
files already complete. Vectors are matched to items by key (id + content hash),
never by position: stale or missing rows are recomputed, extra ones ignored.

Search is exact (one matmul over unit vectors) below `faiss_threshold` items and a
faiss HNSW inner-product index (built per gallery and adapter, cached) above it.
Not thread-safe: the server serialises each gallery's changes with a lock.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adapters.atomic import atomic_write

HNSW_M = 32


def item_key(item_id: str, content: bytes | str) -> str:
    data = content.encode() if isinstance(content, str) else content
    return hashlib.sha256(item_id.encode() + b"\0" + data).hexdigest()[:24]


@dataclass
class Vectors:
    keys: list[str]
    matrix: np.ndarray  # (n, D) float32, unit rows
    version: str
    fingerprint: str
    index: object = None  # faiss index over the gallery's rows in item order, built on demand
    index_key: tuple = ()  # the item keys it was built for
    aligned: tuple | None = None  # (items list, matrix rows in its order); items lists are replaced, never mutated

    def rows(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


@dataclass
class Gallery:
    root: Path
    name: str
    kind: str
    items: list[dict] = field(default_factory=list)
    vectors: dict[str, Vectors] = field(default_factory=dict)  # adapter -> vectors (cache of the files)

    # -- reading ---------------------------------------------------------------------------
    @property
    def ids(self) -> list[str]:
        return [it["id"] for it in self.items]

    def blob(self, item: dict) -> bytes:
        return (self.root / "blobs" / item["blob"]).read_bytes()

    def stored_adapters(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "vectors").glob("*.npz"))

    def load_vectors(self, adapter: str, version: str, fingerprint: str) -> Vectors | None:
        cached = self.vectors.get(adapter)
        if cached is None:
            path = self.root / "vectors" / f"{adapter}.npz"
            if not path.is_file():
                return None
            with np.load(path, allow_pickle=False) as z:
                cached = Vectors(list(z["keys"]), z["matrix"].astype(np.float32), str(z["version"]),
                                 str(z["fingerprint"]))
            self.vectors[adapter] = cached
        if cached.version != version or cached.fingerprint != fingerprint:
            return None
        return cached

    def missing(self, adapter: str, version: str, fingerprint: str) -> list[dict]:
        """Items with no current vector for `adapter`."""
        vec = self.load_vectors(adapter, version, fingerprint)
        have = set(vec.keys) if vec else set()
        return [it for it in self.items if it["key"] not in have]

    def matrix(self, adapter: str, version: str, fingerprint: str) -> tuple[list[dict], np.ndarray]:
        """Items and their vectors, row-aligned (every item must have one: see `missing`).
        Cached until the items or the adapter's vectors change."""
        items = self.items
        vec = self.load_vectors(adapter, version, fingerprint)
        if vec is not None and vec.aligned is not None and vec.aligned[0] is items:
            return items, vec.aligned[1]
        rows = vec.rows() if vec else {}
        order = [rows[it["key"]] for it in items]
        aligned = vec.matrix[order] if order else np.zeros((0, 0), np.float32)
        if vec is not None:
            vec.aligned = (items, aligned)
        return items, aligned

    # -- writing ---------------------------------------------------------------------------
    def _write_manifest(self) -> None:
        body = {"name": self.name, "kind": self.kind, "items": self.items}
        atomic_write(self.root / "manifest.json", json.dumps(body, ensure_ascii=False).encode())

    def put_vectors(self, adapter: str, version: str, fingerprint: str, keys: list[str], matrix: np.ndarray) -> None:
        """Merge vectors for `keys` into the adapter's file; rows of items no longer in the
        manifest on disk are dropped."""
        old = self.load_vectors(adapter, version, fingerprint)
        live = {it["key"] for it in self.items} | set(keys)
        merged: dict[str, np.ndarray] = {}
        if old is not None:
            merged.update((k, old.matrix[i]) for i, k in enumerate(old.keys) if k in live)
        merged.update(zip(keys, matrix))
        ks = list(merged)
        mat = np.stack([merged[k] for k in ks]).astype(np.float32) if ks else np.zeros((0, 0), np.float32)
        buf = io.BytesIO()
        np.savez(buf, keys=np.array(ks, dtype=str), matrix=mat, version=np.array(version),
                 fingerprint=np.array(fingerprint))
        atomic_write(self.root / "vectors" / f"{adapter}.npz", buf.getvalue())
        self.vectors[adapter] = Vectors(ks, mat, version, fingerprint)

    def add(self, entries: list[dict], blobs: dict[str, bytes], vectors=None) -> tuple[list[str], list[str]]:
        """entries: {"id", "key", "blob" or "text", "metadata"}; blobs: file name -> PNG bytes;
        vectors: (adapter, version, fingerprint, keys, matrix) to store first. Returns (added, replaced)."""
        for fname, data in blobs.items():
            path = self.root / "blobs" / fname
            if not path.exists():
                atomic_write(path, data)
        current = {it["id"]: i for i, it in enumerate(self.items)}
        items = list(self.items)
        added, replaced = [], []
        for entry in entries:
            if entry["id"] in current:
                items[current[entry["id"]]] = entry
                replaced.append(entry["id"])
            else:
                current[entry["id"]] = len(items)
                items.append(entry)
                added.append(entry["id"])
        if vectors is not None:
            # Written while self.items is still the old list, so the rows of replaced items
            # survive: until the new manifest lands, the old one on disk still names them.
            self.put_vectors(*vectors)
        self.items = items
        self._write_manifest()
        return added, replaced

    def remove(self, ids: list[str]) -> list[str]:
        gone = set(ids)
        removed = [it["id"] for it in self.items if it["id"] in gone]
        self.items = [it for it in self.items if it["id"] not in gone]
        self._write_manifest()
        live = {it.get("blob") for it in self.items}
        for path in (self.root / "blobs").glob("*.png"):
            if path.name not in live:
                path.unlink(missing_ok=True)  # after the manifest: a crash here only leaves orphans
        return removed


class GalleryStore:
    def __init__(self, data_dir: Path, faiss_threshold: int):
        self.root = Path(data_dir) / "galleries"
        self.root.mkdir(parents=True, exist_ok=True)
        self.faiss_threshold = faiss_threshold
        self._open: dict[str, Gallery] = {}

    def names(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/manifest.json"))

    def get(self, name: str) -> Gallery | None:
        if name in self._open:
            return self._open[name]
        path = self.root / name / "manifest.json"
        if not path.is_file():
            return None
        body = json.loads(path.read_text())
        gallery = Gallery(self.root / name, body["name"], body["kind"], body["items"])
        self._open[name] = gallery
        return gallery

    def create(self, name: str, kind: str) -> Gallery:
        gallery = Gallery(self.root / name, name, kind)
        gallery._write_manifest()
        self._open[name] = gallery
        return gallery

    def delete(self, name: str) -> None:
        """Remove the manifest first (the gallery is gone at once), then its files."""
        self._open.pop(name, None)
        root = self.root / name
        (root / "manifest.json").unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)

    def index_kind(self, gallery: Gallery) -> str:
        return "faiss-hnsw" if len(gallery.items) >= self.faiss_threshold else "exact"

    def search(self, gallery: Gallery, adapter: str, version: str, fingerprint: str, query: np.ndarray,
               k: int) -> list[tuple[dict, float]]:
        """Top-k items by ITC cosine (query: unit (D,))."""
        items, matrix = gallery.matrix(adapter, version, fingerprint)
        if not items:
            return []
        k = min(k, len(items))
        if self.index_kind(gallery) == "exact":
            sims = matrix @ query.astype(np.float32)
            top = np.argpartition(-sims, k - 1)[:k]
            top = top[np.argsort(-sims[top], kind="stable")]
            return [(items[i], float(sims[i])) for i in top]
        vec = gallery.vectors[adapter]
        order = tuple(it["key"] for it in items)
        if vec.index is None or vec.index_key != order:
            vec.index, vec.index_key = _hnsw(matrix), order
        vec.index.hnsw.efSearch = max(64, 2 * k)
        sims, top = vec.index.search(query.astype(np.float32)[None, :], k)
        return [(items[i], float(s)) for i, s in zip(top[0], sims[0]) if i >= 0]


def _hnsw(matrix: np.ndarray):
    import faiss

    index = faiss.IndexHNSWFlat(matrix.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.add(np.ascontiguousarray(matrix, dtype=np.float32))
    return index
