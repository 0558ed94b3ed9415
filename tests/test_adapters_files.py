"""Adapter files: round trip, header-only metadata, and refusal of bad files with a
typed error that names the file and what is wrong. A refused `table.load` leaves the
table exactly as it was."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save as st_save

from adapters import AdapterFileError, AdapterTable, create_adapter, load_adapter, read_adapter_meta, save_adapter
from adapters.runtime.files import FORMAT_VERSION
from tests.adapter_helpers import backbone_pair, randomize

NAME = "a.safetensors"


@pytest.fixture(scope="module")
def env(config, processor, tmp_path_factory):
    bb, _ = backbone_pair(config, processor, seed=8)
    adapter = create_adapter("vcra", bb, task="vqa", rank=4, seed=3)
    randomize(adapter, seed=1)
    root = tmp_path_factory.mktemp("files")
    good = save_adapter(adapter, root / NAME, recipe={"lr": 1e-3, "epochs": 2})
    return bb, adapter, good, root


def _rewrite(src, dst, tensors=None, meta=None):
    """Re-encode a valid file with changed tensors or metadata."""
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        old_meta = f.metadata()
        old = {k: f.get_tensor(k) for k in f.keys()}
    dst.write_bytes(st_save(tensors(old) if tensors else old, metadata=meta(dict(old_meta)) if meta else old_meta))
    return dst


def test_round_trip_and_meta(env):
    bb, adapter, good, _ = env
    meta = read_adapter_meta(good)
    # vqa runs the fusion encoder, so this VCRA has QASN: its file says the real kind
    assert (meta.kind, meta.task, meta.rank, meta.seed, meta.train_ab) == ("vcra-qasn", "vqa", 4, 3, False)
    assert meta.trainable_params == adapter.trainable_count() and meta.format_version == FORMAT_VERSION
    assert meta.backbone_fingerprint == bb.fingerprint and meta.recipe == {"epochs": 2, "lr": 0.001}
    assert meta.nbytes == 4 * adapter.trainable_count()  # frozen pair: only the seed is stored
    loaded = load_adapter(good, bb)
    for (n, p), (m, q) in zip(adapter.state_dict().items(), loaded.state_dict().items()):
        assert n == m and torch.equal(p, q)
    assert torch.equal(loaded.pair.A_enc, adapter.pair.A_enc)  # regenerated from the seed


def test_files_of_the_old_header_kind_load_and_report_the_real_kind(env, tmp_path):
    """Files written before the header said "vcra-qasn" carry kind "vcra" with qasn on in
    their options: they still load, identical, and list as what they are."""
    bb, adapter, good, _ = env
    old = _rewrite(good, tmp_path / "old.safetensors", meta=lambda m: {**m, "kind": "vcra"})
    meta = read_adapter_meta(old)
    assert (meta.kind, meta.header_kind, meta.options["qasn"]) == ("vcra-qasn", "vcra", True)
    table = AdapterTable(bb, capacity=2, max_rank=4)
    assert table.load("old", old).kind == "vcra-qasn" and table.load("new", good).kind == "vcra-qasn"
    loaded = load_adapter(old, bb)
    assert loaded.kind == "vcra-qasn"
    assert all(torch.equal(p, q) for p, q in zip(adapter.state_dict().values(), loaded.state_dict().values()))
    plain = create_adapter("vcra", bb, task="vqa", rank=4, seed=3, qasn=False)  # no QASN: plain "vcra"
    assert read_adapter_meta(save_adapter(plain, tmp_path / "plain.safetensors", recipe={})).kind == "vcra"


def test_train_ab_file_stores_the_pair(env, tmp_path):
    bb = env[0]
    adapter = create_adapter("vcra", bb, task="retrieve", rank=2, seed=1, train_ab=True)
    with torch.no_grad():
        adapter.pair.A_enc.add_(1.0)  # trained away from the seed's draw
    loaded = load_adapter(save_adapter(adapter, tmp_path / "ab.safetensors", recipe={}), bb)
    assert torch.equal(loaded.pair.A_enc, adapter.pair.A_enc)


def _bad_cases(env, tmp_path):
    _, _, good, _ = env
    data = good.read_bytes()
    out = {}
    p = tmp_path / "corrupt.safetensors"
    p.write_bytes(b"\x00garbage" * 40)
    out["corrupt"] = (p, "corrupt")
    p = tmp_path / "notjson.safetensors"
    p.write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}" + b"\0" * 8)
    out["header-not-json"] = (p, "not JSON")
    p = tmp_path / "truncated.safetensors"
    p.write_bytes(data[: len(data) - 10])
    out["truncated"] = (p, "truncated")
    p = tmp_path / "tiny.safetensors"
    p.write_bytes(data[:5])
    out["truncated-header"] = (p, "truncated")
    out["wrong-shape"] = (_rewrite(good, tmp_path / "shape.safetensors", tensors=lambda t: {
        **t, "lam_b.vision_0_q": torch.zeros(7)}), "tensor 'lam_b.vision_0_q' has shape (7,)")
    out["missing-tensor"] = (_rewrite(good, tmp_path / "missing.safetensors", tensors=lambda t: {
        k: v for k, v in t.items() if k != "scale"}), "missing ['scale']")
    out["nan"] = (_rewrite(good, tmp_path / "nan.safetensors", tensors=lambda t: {
        **t, "lam_a.text_1_kv": torch.full_like(t["lam_a.text_1_kv"], float("nan"))}), "'lam_a.text_1_kv' holds NaN")
    out["inf"] = (_rewrite(good, tmp_path / "inf.safetensors", tensors=lambda t: {
        **t, "scale": torch.tensor(float("inf"))}), "'scale' holds NaN or inf")
    out["dtype"] = (_rewrite(good, tmp_path / "dtype.safetensors", tensors=lambda t: {
        **t, "scale": t["scale"].half()}), "'scale' has dtype F16")
    out["fingerprint"] = (_rewrite(good, tmp_path / "fp.safetensors", meta=lambda m: {
        **m, "backbone_fingerprint": "0123456789abcdef"}), "made for backbone 0123456789abcdef")
    out["version"] = (_rewrite(good, tmp_path / "ver.safetensors", meta=lambda m: {
        **m, "format_version": "99"}), "'format_version' is 99")
    out["not-ours"] = (_rewrite(good, tmp_path / "plain.safetensors", meta=lambda m: {"format": "pt"}),
                       "not a unitrans adapter")
    out["missing-field"] = (_rewrite(good, tmp_path / "field.safetensors", meta=lambda m: {
        k: v for k, v in m.items() if k != "seed"}), "missing header field(s) ['seed']")
    out["bad-rank"] = (_rewrite(good, tmp_path / "rank.safetensors", meta=lambda m: {**m, "rank": "four"}),
                       "field 'rank' is malformed")
    out["rank-mismatch"] = (_rewrite(good, tmp_path / "rank2.safetensors", meta=lambda m: {**m, "rank": "5"}),
                            "has shape (4,), expected (5,)")
    out["bad-kind"] = (_rewrite(good, tmp_path / "kind.safetensors", meta=lambda m: {**m, "kind": "bogus"}),
                       "field 'kind' is 'bogus'")
    out["bad-option"] = (_rewrite(good, tmp_path / "opt.safetensors", meta=lambda m: {
        **m, "options": json.dumps({"qasn": True, "wings": 2})}), "describe no valid vcra-qasn adapter")
    out["count"] = (_rewrite(good, tmp_path / "count.safetensors", meta=lambda m: {**m, "trainable_params": "1"}),
                    "'trainable_params' is 1")
    out["missing-file"] = (tmp_path / "nope.safetensors", "cannot read")
    return out


CASES = ["corrupt", "header-not-json", "truncated", "truncated-header", "wrong-shape", "missing-tensor", "nan", "inf",
         "dtype", "fingerprint", "version", "not-ours", "missing-field", "bad-rank", "rank-mismatch", "bad-kind",
         "bad-option", "count", "missing-file"]


@pytest.mark.parametrize("case", CASES)
def test_bad_file_is_refused_and_table_is_untouched(env, tmp_path, case):
    bb, adapter, good, _ = env
    path, message = _bad_cases(env, tmp_path)[case]
    table = AdapterTable(bb, capacity=2, max_rank=4)
    table.load("keep", good)
    before = (table.names(), table.generation, [t.clone() for t in table._bank_tensors()])
    with pytest.raises(AdapterFileError) as err:
        table.load("new", path)
    assert message in str(err.value), str(err.value)
    assert path.name in str(err.value)
    assert (table.names(), table.generation) == before[:2] and "new" not in table
    assert all(torch.equal(t, b) for t, b in zip(table._bank_tensors(), before[2]))
    with pytest.raises(AdapterFileError):
        table.load("keep", path)  # a failed hot-swap keeps the old adapter
    assert table.names() == ["keep"]


def test_header_reader_refuses_what_it_can_see(env, tmp_path):
    cases = _bad_cases(env, tmp_path)
    for case in ("corrupt", "truncated", "version", "not-ours", "missing-field", "bad-kind", "missing-file"):
        with pytest.raises(AdapterFileError, match=cases[case][1].replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[").replace("]", r"\]")):
            read_adapter_meta(cases[case][0])
