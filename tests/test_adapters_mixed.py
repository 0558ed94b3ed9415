"""A mixed batch gives each row exactly what that request gets alone: caption with beam
3, VQA (generation and candidate ranking), ITM, ITC; for 1, 2 and 8 distinct adapters,
with rows that use none; shared-pair VCRA adapters (with and without QASN) next to
grouped ones (own trained pair, VeRA, LoRA, VL-PET at its four granularities). Adapter vectors are random and non-zero, so adapters really differ."""

from __future__ import annotations

import pytest
import torch

from adapters import AdapterTable, create_adapter, tasks
from adapters.kinds.lora.layer import MatrixGroup
from tests.adapter_helpers import backbone_pair, inputs, randomize

MAX_NEW = 5


@pytest.fixture(scope="module")
def setup(config, processor):
    bb, frozen = backbone_pair(config, processor, seed=5)
    table = AdapterTable(bb, capacity=18, max_rank=8)
    adapters = {}
    for i in range(8):  # 8 VCRA adapters sharing one frozen pair (same seed, rank)
        adapters[f"vcra{i}"] = create_adapter("vcra", bb, task="vqa", rank=4, seed=0)
    adapters["own_ab"] = create_adapter("vcra", bb, task="vqa", rank=4, seed=3, train_ab=True)
    adapters["vera"] = create_adapter("vera", bb, task="vqa", rank=8, seed=1)
    adapters["lora"] = create_adapter("lora", bb, task="vqa", rank=4, seed=2)
    adapters["lora2"] = create_adapter("lora", bb, task="vqa", rank=2, seed=4)
    adapters["vcra_noq"] = create_adapter("vcra", bb, task="vqa", rank=4, seed=0, qasn=False)  # shares vcra0's pair
    for g in ("large", "middle-x", "middle-y", "small"):
        adapters[f"vlpet-{g}"] = create_adapter(f"vl-pet-{g}", bb, task="vqa", rank=4, seed=6)
    for j, (name, adapter) in enumerate(adapters.items()):
        randomize(adapter, seed=100 + j)
        table.insert(name, adapter)
    return bb, frozen, table, adapters


def _pair_groups(routing):
    return [pg for g in routing.groups for pg in getattr(g, "pair_groups", [])]


def _matrix_groups(routing):
    return [g for g in routing.groups if isinstance(g, MatrixGroup)]


def _run(bb, routing, px, ids, mask):
    with torch.inference_mode():
        return {
            "caption": tasks.caption_ids(bb, px, num_beams=3, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW,
                                         routing=routing),
            "vqa": tasks.vqa_ids(bb, px, ids, mask, num_beams=3, max_new_tokens=4, min_new_tokens=4, routing=routing),
            "rank": torch.stack(tasks.vqa_rank(bb, px, ids, mask, [["red", "two", "yes"]] * len(px), routing=routing)),
            "itm": tasks.itm_logits(bb, px, ids, mask, routing=routing),
            "itc_image": tasks.itc_image(bb, px, routing=routing),
            "itc_text": tasks.itc_text(bb, ids, mask, routing=routing),
        }


def _check_rows(bb, table, names, seed):
    px, ids, mask = inputs(bb, len(names), seed=seed)
    mixed = _run(bb, table.routing(names), px, ids, mask)
    for i, name in enumerate(names):
        alone = _run(bb, table.routing([name]), px[i:i + 1], ids[i:i + 1], mask[i:i + 1])
        for key in ("caption", "vqa"):
            assert torch.equal(mixed[key][i], alone[key][0]), f"row {i} ({name}): {key} tokens differ"
        for key in ("rank", "itm", "itc_image", "itc_text"):
            torch.testing.assert_close(mixed[key][i], alone[key][0], atol=1e-5, rtol=1e-4,
                                       msg=f"row {i} ({name}): {key}")
    return mixed


@pytest.mark.parametrize("names", [
    ["vcra0", None, "vcra0"],                                            # 1 distinct + none
    ["vcra0", None, "vcra1", "vcra1"],                                   # 2 distinct
    ["vcra0", "vcra1", None, "vcra2", "vcra3", "vcra4", None, "vcra5", "vcra6", "vcra7"],  # 8 distinct
], ids=["1", "2", "8"])
def test_shared_pair_batch_equals_rows_alone(setup, names):
    bb, frozen, table, _ = setup
    routing = table.routing(names)
    assert len(_pair_groups(routing)) == 1 and _pair_groups(routing)[0].requests is None  # one group: 2 matmuls
    mixed = _check_rows(bb, table, names, seed=len(names))
    px, ids, mask = inputs(bb, len(names), seed=len(names))
    ref = _run(frozen, None, px, ids, mask)
    for i, name in enumerate(names):  # rows with none: exactly the frozen backbone
        if name is None:
            assert all(torch.equal(mixed[k][i], ref[k][i]) for k in ("caption", "vqa", "itm", "itc_image"))
        else:
            assert not torch.allclose(mixed["itm"][i], ref["itm"][i], atol=1e-4)


def test_grouped_kinds_batch_equals_rows_alone(setup):
    names = ["lora", "vcra0", None, "own_ab", "vera", "lora2", "vcra1", "lora"]
    bb, _, table, _ = setup
    routing = table.routing(names)
    assert len(_pair_groups(routing)) == 3 and len(_matrix_groups(routing)) == 2
    _check_rows(bb, table, names, seed=9)


def test_vcra_qasn_lora_and_vl_pet_rows_batch_equal_rows_alone(setup):
    """VCRA, VCRA+QASN, LoRA and all four VL-PET kinds in one batch, beam search included."""
    bb, _, table, _ = setup
    names = ["vcra0", "vlpet-large", "vcra_noq", None, "lora", "vlpet-small", "own_ab", "vlpet-middle-x",
             "vcra1", "vlpet-middle-y", "vlpet-large"]
    assert [table.meta(n).kind for n in ("vcra0", "vcra_noq", "lora", "vlpet-middle-y")] == \
        ["vcra-qasn", "vcra", "lora", "vl-pet-middle-y"]
    routing = table.routing(names)
    assert len(_pair_groups(routing)) == 2 and len(_matrix_groups(routing)) == 1  # vcra*+noq share a pair
    assert len(routing.groups) == 1 + 1 + 4  # one vector group, one LoRA, four VL-PET adapters
    _check_rows(bb, table, names, seed=13)


def test_table_rows_match_the_live_adapter(setup):
    """Serving (table slots) and training (live parameters) run the same forward."""
    bb, _, table, adapters = setup
    px, ids, mask = inputs(bb, 2, seed=4)
    for name in ("vcra3", "own_ab", "vera", "lora", "vlpet-large", "vlpet-small"):
        served = _run(bb, table.routing([name, name]), px, ids, mask)
        live = _run(bb, adapters[name].routing(), px, ids, mask)
        assert torch.equal(served["caption"], live["caption"]), name
        torch.testing.assert_close(served["itm"], live["itm"], atol=1e-5, rtol=1e-4)


def test_adapters_differ_from_each_other(setup):
    bb, _, table, _ = setup
    px, ids, mask = inputs(bb, 1)
    names = ("vcra0", "vcra1", "lora", "vera", "vlpet-large", "vlpet-middle-x", "vlpet-middle-y", "vlpet-small")
    logits = [_run(bb, table.routing([n]), px, ids, mask)["itm"] for n in names]
    assert all(not torch.allclose(logits[i], logits[j], atol=1e-4) for i in range(len(names)) for j in range(i))
