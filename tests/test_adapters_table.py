"""The adapter table: fixed preallocated storage written in place, LRU eviction of
unpinned slots, pinning, hot-swap under the same name, stale-routing detection."""

from __future__ import annotations

import pytest
import torch

from adapters import AdapterTable, AdapterTableError, create_adapter, tasks
from tests.adapter_helpers import backbone_pair, inputs, randomize


@pytest.fixture(scope="module")
def bb(config, processor):
    return backbone_pair(config, processor, seed=2)[0]


def _adapter(bb, seed, kind="vcra", **kw):
    adapter = create_adapter(kind, bb, task="retrieve", rank=4, seed=0, **kw)
    randomize(adapter, seed=seed)
    return adapter


def test_insert_writes_in_place_and_allocates_nothing(bb):
    table = AdapterTable(bb, capacity=3, max_rank=4)
    storage = [t.data_ptr() for t in table._bank_tensors()]
    weights = {n: p.data_ptr() for n, p in bb.named_parameters()}
    for i in range(6):
        table.insert(f"a{i}", _adapter(bb, i))
    assert [t.data_ptr() for t in table._bank_tensors()] == storage
    assert {n: p.data_ptr() for n, p in bb.named_parameters()} == weights
    assert len(table) == 3 and table.names() == ["a3", "a4", "a5"]  # LRU evicted a0..a2
    assert torch.count_nonzero(table.banks["vectors"].scale[0]) == 0  # slot 0 (frozen) never written


def test_lru_order_follows_use_and_pins_protect(bb):
    table = AdapterTable(bb, capacity=2, max_rank=4)
    table.insert("a", _adapter(bb, 1))
    table.insert("b", _adapter(bb, 2))
    table.routing(["a"])  # a used after b: b is now least recently used
    table.insert("c", _adapter(bb, 3))
    assert set(table.names()) == {"a", "c"}
    table.pin("a")
    table.pin("c")
    with pytest.raises(AdapterTableError, match="every adapter is pinned"):
        table.insert("d", _adapter(bb, 4))
    assert set(table.names()) == {"a", "c"}
    table.pin("c", False)
    table.insert("d", _adapter(bb, 4))
    assert set(table.names()) == {"a", "d"} and table.pinned("a")
    table.evict("a")  # explicit eviction works even when pinned
    assert "a" not in table and table.names() == ["d"]


def test_hot_swap_same_name_and_stale_routing(bb):
    table = AdapterTable(bb, capacity=2, max_rank=4)
    px, ids, mask = inputs(bb, 1)
    first, second = _adapter(bb, 1), _adapter(bb, 2)
    table.insert("x", first)
    routing = table.routing(["x"])
    with torch.inference_mode():
        before = tasks.itm_logits(bb, px, ids, mask, routing=routing)
    table.insert("x", second)  # same slot, new vectors
    assert table.names() == ["x"]
    with pytest.raises(AdapterTableError, match="stale"):
        with torch.inference_mode():
            tasks.itm_logits(bb, px, ids, mask, routing=routing)
    with torch.inference_mode():
        after = tasks.itm_logits(bb, px, ids, mask, routing=table.routing(["x"]))
        expect = tasks.itm_logits(bb, px, ids, mask, routing=second.routing())
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(after, expect, atol=1e-5, rtol=1e-4)


def test_evicting_frees_shared_pairs_and_slots_are_reused(bb):
    table = AdapterTable(bb, capacity=2, max_rank=4)
    table.insert("a", _adapter(bb, 1))
    table.insert("b", _adapter(bb, 2))
    assert len(table.banks["vectors"].pairs) == 1  # same (kind, seed, rank): one shared pair entry
    table.evict("a")
    table.evict("b")
    assert table.banks["vectors"].pairs == {} and len(table) == 0
    table.insert("c", _adapter(bb, 3))
    assert table._slots["c"].index == 1


def test_refusals(bb):
    table = AdapterTable(bb, capacity=2, max_rank=2)
    with pytest.raises(AdapterTableError, match="rank 4 > the table's max_rank 2"):
        table.insert("big", _adapter(bb, 1))
    with pytest.raises(AdapterTableError, match="no adapter named 'ghost'"):
        table.routing(["ghost"])
    with pytest.raises(AdapterTableError, match="cannot be served"):
        table.insert("full", create_adapter("full", bb, task="caption"))
    other = _adapter(bb, 1)
    other.backbone_fingerprint = "ffffffffffffffff"
    with pytest.raises(AdapterTableError, match="made for backbone ffffffffffffffff"):
        AdapterTable(bb, capacity=1, max_rank=4).insert("o", other)
    assert len(table) == 0
