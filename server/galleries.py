"""Retrieval galleries in LanceDB: one table per gallery, shared by every replica given the same URI.

    python -m server.galleries migrate OLD_DATA_DIR [--galleries URI]   # import <dir>/galleries/*/manifest.json

A gallery table (its kind, "image", "video" or "text", in the schema metadata):

    id        string                 the item's id (unique; re-adding it replaces the item)
    key       string                 sha256(id, content)[:24]: changes when the content does
    metadata  json                   the item's metadata object (filters read it: server/gallery_filter.py)
    image     large_binary | text string   the item itself, PNG bytes (video: its sampled frames,
                                     server/videos.py pack_frames) or text, for ITM re-ranking
    k__<adapter>__<h>, v__<adapter>__<h>   per vector space (adapter, its file version, backbone
                                     fingerprint -> h): the `key` the ITC vector (D float32) was computed from

Vector lifecycle: an add computes vectors with the adapter it names (default: the retrieval
default) and writes items and those vectors in ONE commit; every other space's vector of a
replaced item is stale at once (its k__ column no longer equals `key`). A search with a space
whose column is absent or has stale/missing rows first fills them (`missing` -> compute ->
`put_vectors`, merged on (id, key), so a vector is never stored against content it was not
computed from), then searches only rows whose k__ equals key.

Every write is one Lance commit (data files first, then an atomic manifest), so a kill -9
leaves the previous or the next version; Lance retries commits that race with another
replica's. Reads check for the latest version on every call (read_consistency_interval 0).
Search is exact until a space's column gets an IVF-PQ index (at `index_threshold` rows, or
on request); rows added after it are searched exactly beside the index until `optimize`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from datetime import timedelta

import numpy as np
import pyarrow as pa

from server.gallery_filter import sql_string

log = logging.getLogger("unitrans.galleries")
NPROBES, REFINE = 32, 10  # IVF partitions searched; candidates re-scored exactly per result wanted
BASE = ["id", "key", "metadata", "image", "text"]


class GalleryExists(Exception):
    pass


def item_key(item_id: str, content: bytes | str) -> str:
    data = content.encode() if isinstance(content, str) else content
    return hashlib.sha256(item_id.encode() + b"\0" + data).hexdigest()[:24]


def space_columns(label: str, version: str, fingerprint: str) -> tuple[str, str]:
    """(key column, vector column) of one vector space."""
    h = hashlib.sha256(f"{version}\0{fingerprint}".encode()).hexdigest()[:12]
    return f"k__{label}__{h}", f"v__{label}__{h}"


def q(column: str) -> str:  # identifiers hold '-' (adapter names): always quoted
    return f"`{column}`"


def _schema(kind: str) -> pa.Schema:
    return pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("key", pa.string()),
                      pa.field("metadata", pa.json_()), pa.field("image", pa.large_binary()),
                      pa.field("text", pa.string())], metadata={"unitrans.kind": kind})


def _in(column: str, values) -> str:
    return f"{q(column)} IN ({', '.join(sql_string(v) for v in values)})"


class GalleryStore:
    def __init__(self, uri: str, storage_options: dict | None = None, index_threshold: int = 100_000):
        import lancedb

        self.uri = str(uri)
        self.index_threshold = index_threshold
        self.db = lancedb.connect(self.uri, read_consistency_interval=timedelta(0),
                                  storage_options=storage_options or None)

    # -- tables ------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self.db.list_tables(limit=None).tables)

    def table(self, name: str):
        """The gallery's table, or None."""
        try:
            return self.db.open_table(name)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            if "not found" in str(exc).lower() or "was not found" in str(exc).lower() or isinstance(
                    exc, FileNotFoundError):
                return None
            raise

    def kind(self, tbl) -> str:
        return (tbl.schema.metadata or {}).get(b"unitrans.kind", b"image").decode()

    def create(self, name: str, kind: str):
        try:
            return self.db.create_table(name, schema=_schema(kind))
        except (ValueError, OSError) as exc:
            if "exist" in str(exc).lower():
                raise GalleryExists(name) from None
            raise

    def delete(self, name: str) -> bool:
        if self.table(name) is None:
            return False
        self.db.drop_table(name, ignore_missing=True)
        return True

    def info(self, tbl) -> dict:
        spaces = [c for c in tbl.schema.names if c.startswith("v__")]
        indexed = {i.columns[0] for i in tbl.list_indices()}
        return {"name": tbl.name, "kind": self.kind(tbl), "size": tbl.count_rows(),
                "adapters": sorted({c[3:].rsplit("__", 1)[0] for c in spaces}),
                "index": "ivf_pq" if indexed & set(spaces) else "exact",
                "indexed": sorted({c[3:].rsplit("__", 1)[0] for c in indexed & set(spaces)})}

    def items(self, tbl) -> list[dict]:
        rows = tbl.search(None).select(["id", "text", "metadata"]).limit(None).to_arrow().to_pylist()
        return sorted(({"id": r["id"], "text": r["text"], "metadata": json.loads(r["metadata"] or "{}")} for r in rows),
                      key=lambda r: r["id"])  # by id: a table's row order changes with every replace

    # -- writes (each one commit) ---------------------------------------------------------------
    def _ensure_space(self, tbl, cols: tuple[str, str], dim: int) -> None:
        if cols[1] in tbl.schema.names:
            return
        try:
            tbl.add_columns([pa.field(cols[0], pa.string()), pa.field(cols[1], pa.list_(pa.float32(), dim))])
        except ValueError as exc:
            if "already exists" not in str(exc):  # another replica added it first
                raise

    def add(self, tbl, rows: list[dict], cols: tuple[str, str] | None, vectors: np.ndarray | None
            ) -> tuple[list[str], list[str]]:
        """rows: {"id", "key", "metadata", "image" | "text"}; vectors (n, D) unit rows for `cols`
        (or None: no vectors yet). Items and their vectors land in one commit. Returns (added, replaced)."""
        ids = [r["id"] for r in rows]
        existing = set(tbl.search(None).where(_in("id", ids)).select(["id"]).limit(None).to_arrow()["id"].to_pylist())
        columns = {
            "id": ids, "key": [r["key"] for r in rows],
            "metadata": pa.array([json.dumps(r.get("metadata") or {}, ensure_ascii=False) for r in rows], pa.json_()),
            "image": pa.array([r.get("image") for r in rows], pa.large_binary()),
            "text": pa.array([r.get("text") for r in rows], pa.string())}
        if cols is not None:
            self._ensure_space(tbl, cols, vectors.shape[1])
            columns.update({cols[0]: [r["key"] for r in rows], cols[1]: _fixed(vectors)})
        src = pa.table(columns)
        tbl.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(src)
        return [i for i in ids if i not in existing], [i for i in ids if i in existing]

    def remove(self, tbl, ids: list[str]) -> list[str]:
        found = tbl.search(None).where(_in("id", ids)).select(["id"]).limit(None).to_arrow()["id"].to_pylist()
        if found:
            tbl.delete(_in("id", found))
        return [i for i in ids if i in set(found)]

    def put_vectors(self, tbl, cols: tuple[str, str], ids: list[str], keys: list[str], vectors: np.ndarray) -> None:
        """Store vectors computed from (id, key); rows replaced or deleted meanwhile are left alone."""
        self._ensure_space(tbl, cols, vectors.shape[1])
        src = pa.table({"id": ids, "key": keys, cols[0]: keys, cols[1]: _fixed(vectors)})
        tbl.merge_insert(["id", "key"]).when_matched_update_all().execute(src)

    # -- reads --------------------------------------------------------------------------------
    def missing(self, tbl, cols: tuple[str, str], chunk: int):
        """Batches (lists of row dicts with id, key and the content) lacking a current vector."""
        content = "text" if self.kind(tbl) == "text" else "image"  # video: packed frames
        where = "true" if cols[0] not in tbl.schema.names else f"{q(cols[0])} IS NULL OR {q(cols[0])} != key"
        if tbl.count_rows(where) == 0:
            return
        reader = tbl.search(None).where(where).select(["id", "key", content]).limit(None).to_batches(chunk)
        for batch in reader:
            yield batch.to_pylist()

    def search(self, tbl, cols: tuple[str, str], query: np.ndarray, k: int, where: str | None = None,
               exact: bool = False) -> list[tuple[dict, float]]:
        """Top-k rows by ITC cosine (query: unit (D,)) among rows with a current vector that
        match `where`; each row has id, metadata and its content (read from the same version)."""
        if cols[1] not in tbl.schema.names:
            return []
        pred = f"{q(cols[0])} = key" + (f" AND {where}" if where else "")
        content = "text" if self.kind(tbl) == "text" else "image"  # video: packed frames
        s = (tbl.search(np.asarray(query, np.float32), vector_column_name=cols[1]).metric("cosine")
             .where(pred, prefilter=True).select(["id", "metadata", content, "_distance"]).limit(k))
        s = s.bypass_vector_index() if exact else s.nprobes(NPROBES).refine_factor(REFINE)
        rows = s.to_arrow().to_pylist()
        for r in rows:
            r["metadata"] = json.loads(r["metadata"] or "{}")
        return [(r, 1.0 - float(r.pop("_distance"))) for r in rows]

    # -- indexes ------------------------------------------------------------------------------
    def build_index(self, tbl, column: str) -> None:
        """IVF-PQ (cosine) over one space's vectors: ~sqrt(n) partitions, D/8 sub-vectors of 8 floats."""
        n = tbl.count_rows(f"{q(column)} IS NOT NULL")
        dim = tbl.schema.field(column).type.list_size
        from lancedb.index import IvfPq

        tbl.create_index(column, config=IvfPq(distance_type="cosine", num_partitions=max(1, min(4096, int(n ** 0.5))),
                                              num_sub_vectors=max(1, dim // 8)), replace=True)

    def maintain(self, tbl) -> None:
        """After writes: index spaces that reached the threshold; fold rows added since into
        existing indexes (optimize) once they are a tenth of the indexed ones."""
        indexed = {i.columns[0]: i.name for i in tbl.list_indices()}
        for column in [c for c in tbl.schema.names if c.startswith("v__")]:
            if column not in indexed:
                if tbl.count_rows(f"{q(column)} IS NOT NULL") >= self.index_threshold:
                    log.info("gallery %s: building an IVF-PQ index on %s", tbl.name, column)
                    self.build_index(tbl, column)
                continue
            stats = tbl.index_stats(indexed[column])
            if stats is not None and stats.num_unindexed_rows > max(1000, stats.num_indexed_rows // 10):
                tbl.optimize()
                return


def _fixed(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def main(argv: list[str]) -> int:
    from server.gallery_migrate import migrate
    from server.settings import Settings

    p = argparse.ArgumentParser(prog="python -m server.galleries", description="Gallery store maintenance.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("migrate", help="import galleries of the old on-disk format (<dir>/galleries/<name>/)")
    m.add_argument("old_data_dir", help="the old --data directory (holding galleries/<name>/manifest.json)")
    m.add_argument("--galleries", help="LanceDB URI to import into (default: the server's, UNITRANS_GALLERIES)")
    args = p.parse_args(argv)
    s = Settings()
    store = GalleryStore(args.galleries or s.gallery_uri(), s.gallery_storage_options, s.gallery_index_threshold)
    for line in migrate(args.old_data_dir, store):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
