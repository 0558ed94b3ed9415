"""The ablation driver end to end on a tiny world: learning rates chosen on validation,
several seeds as mean ± std, both plots, and a rerun that trains nothing again."""

from __future__ import annotations

import json

from tests.tiny import tiny_shapes_world
from training import ablation


def test_ablation_lr_search_seeds_and_plots(tmp_path):
    world = tiny_shapes_world(tmp_path / "world", seed=0, n=60)
    md = tmp_path / "docs" / "results.md"
    argv = ["--backbone", str(world / "bb"), "--world", str(world), "--work", str(tmp_path / "work"),
            "--results", str(md), "--tasks", "vqa", "--rows", "frozen", "LoRA", "VCRA+QASN",
            "--seeds", "0", "1", "--lr-search", "0.01", "0.03", "--lr-search-steps", "1", "--batch-size", "4", "--train-limit", "8",
            "--val-limit", "4", "--test-limit", "4", "--eval-every", "1"]
    results = ablation.main(argv)
    search = [r for r in results if "main" not in r]
    assert sorted((r["row"], r["lr"]) for r in search) == [("LoRA", 0.01), ("LoRA", 0.03), ("VCRA+QASN", 0.01),
                                                          ("VCRA+QASN", 0.03)]
    for row in ("LoRA", "VCRA+QASN"):
        runs = [r for r in results if r["row"] == row and "main" in r]
        assert sorted(r["seed"] for r in runs) == [0, 1]
        best = max((r for r in search if r["row"] == row), key=lambda r: r["val_main"])
        assert all(r["lr"] == best["lr"] for r in runs)  # the validation choice, for every seed
    text = md.read_text()
    assert "(n=2)" in text and "chosen on the validation split" in text
    assert (md.with_suffix(".png")).stat().st_size > 0 and md.with_name("results_steps.png").stat().st_size > 0
    before = json.loads((tmp_path / "work" / "results.json").read_text())
    assert ablation.main(argv) == before  # a rerun resumes: nothing is trained twice


def test_ablation_vl_pet_rows_run_for_every_task(tmp_path):
    """The four VL-PET rows train, evaluate through the table and land in the table (tiny world)."""
    world = tiny_shapes_world(tmp_path / "world", seed=1, n=40)
    md = tmp_path / "results.md"
    rows = ["VL-PET-large", "VL-PET-middle_X", "VL-PET-middle_Y", "VL-PET-small"]
    results = ablation.main(["--backbone", str(world / "bb"), "--world", str(world), "--work", str(tmp_path / "w"),
                             "--results", str(md), "--rows", *rows, "--rank", "4", "--batch-size", "4",
                             "--train-limit", "8", "--val-limit", "4", "--test-limit", "4", "--k-test", "2"])
    done = {(r["task"], r["row"]) for r in results if "main" in r}
    assert done == {(t, row) for t in ("caption", "vqa", "retrieval") for row in rows}
    assert all(r["trainable_params"] > 0 and r["kind"].startswith("vl-pet-") for r in results)
    small = {r["task"]: r["trainable_params"] for r in results if r["row"] == "VL-PET-small"}
    large = {r["task"]: r["trainable_params"] for r in results if r["row"] == "VL-PET-large"}
    assert all(small[t] < large[t] for t in small)  # G of 1 x 1 costs less than N x d
    text = md.read_text()
    assert all(f"| {row} | " in text and "not run" not in text.split(f"| {row} | ")[1].split("\n")[0] for row in rows)


def test_ablation_merges_parallel_work_directories_and_renders_without_running(tmp_path):
    """Two processes (one per core) run disjoint tasks into their own --work; a third
    invocation merges them and only renders: nothing is trained again."""
    world = tiny_shapes_world(tmp_path / "world", seed=2, n=40)
    common = ["--backbone", str(world / "bb"), "--world", str(world), "--rows", "frozen", "VCRA+QASN",
              "--batch-size", "4", "--train-limit", "8", "--val-limit", "4", "--test-limit", "4", "--k-test", "2"]
    a = ablation.main([*common, "--work", str(tmp_path / "a"), "--results", str(tmp_path / "a.md"), "--tasks", "vqa"])
    b = ablation.main([*common, "--work", str(tmp_path / "b"), "--results", str(tmp_path / "b.md"),
                       "--tasks", "caption"])
    md = tmp_path / "all.md"
    merged = ablation.main([*common, "--work", str(tmp_path / "all"), "--results", str(md), "--tasks", "caption", "vqa",
                            "--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--render-only"])
    assert merged == a + b
    text = md.read_text()
    assert "| VCRA+QASN | " in text and "not run" not in text.split("| VCRA+QASN | ")[1].split("\n")[0]
