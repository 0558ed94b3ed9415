"""The ablation of the paper's Table 8, on the shapes world, for all three tasks.

    python -m training.ablation --backbone models/blip-shapes --world /tmp/shapes-world \
        --work /tmp/ablation --results docs/results.md

Rows: frozen backbone, full fine-tune, LoRA, VeRA without cross-modal sharing (one
pair per modality, the paper's '+scaling vectors'), VCRA, VCRA+QASN, VCRA+QASN+MCAM,
all at one rank. Every row is a real `training.fit` run (same flags, seed and budget)
whose output file is evaluated by `training.evaluate` on the test split, loaded
through the AdapterTable as the server loads it. MCAM regularises ITC, so it only
changes retrieval; for caption and VQA that row repeats VCRA+QASN (no extra run).
Writes `<work>/results.json`, the markdown table to --results and a PNG plot of the
main metric against trainable parameters (log x) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning (as training.shapes.pretrain does): on 2 shared
# cores spinning made the first steps 10-20x slower. Only effective before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from training import evaluate as evaluate_cli
from training import fit

ROWS = [  # (row name, fit --kind, extra fit flags)
    ("frozen", None, []),
    ("full fine-tune", "full", []),
    ("LoRA", "lora", []),
    ("VeRA (no sharing)", "vera", []),
    ("VCRA", "vcra", []),
    ("VCRA+QASN", "vcra-qasn", ["--no-mcam"]),
    ("VCRA+QASN+MCAM", "vcra-qasn", ["--mcam"]),
]
TASKS = ("caption", "vqa", "retrieval")
ANALYSIS = "<!-- analysis: hand-written below, kept when the script rewrites the table -->"
METRIC_NAME = {"caption": "CIDEr", "vqa": "VQA acc. (%)", "retrieval": "R@mean (%)"}


def _out_path(work: str, task: str, row: str, kind: str | None) -> Path:
    slug = row.lower().replace(" ", "-").replace("+", "-").replace("(", "").replace(")", "")
    return Path(work) / task / (slug if kind == "full" else f"{slug}.safetensors")


def loss_curves(results: list[dict], args) -> list[str]:
    """First and last logged training loss of every trained row (from fit's JSONL logs):
    a loss still falling at the end means the budget, not the method, set the metric."""
    out = ["| task | method | steps | loss at step 10 | loss at 50% | final loss |", "|---|---|---|---|---|---|"]
    for r in results:
        if r["kind"] == "frozen" or r.get("repeat"):
            continue
        path = _out_path(args.work, r["task"], r["row"], r["kind"])
        log = path.with_name(path.name + ".log.jsonl")
        if not log.exists():
            continue
        steps = [x for x in map(json.loads, log.read_text().splitlines()) if "step" in x and "loss" in x]
        if steps:
            mid = steps[len(steps) // 2]
            out.append(f"| {r['task']} | {r['row']} | {steps[-1]['step']} | {steps[0]['loss']:.3f} | "
                       f"{mid['loss']:.3f} | {steps[-1]['loss']:.3f} |")
    return out


def run_row(args, task: str, row: str, kind: str | None, extra: list[str]) -> dict:
    out = _out_path(args.work, task, row, kind)
    t0 = time.perf_counter()
    train = {}
    if kind is not None:
        flags = ["--task", task, "--kind", kind, "--backbone", args.backbone, "--image-root", args.world,
                 "--train", f"{args.world}/{task}_train.json", "--val", f"{args.world}/{task}_val.json",
                 "--out", str(out), "--rank", str(args.rank), "--seed", str(args.seed), "--epochs", str(args.epochs),
                 "--batch-size", str(args.batch_size), "--train-limit", str(args.train_limit[task]), "--no-eval",
                 "--no-progress", "--resume", *extra]
        if kind == "full" and args.full_lr is not None:
            flags += ["--lr", str(args.full_lr)]
        train = fit.main(flags)
    metrics = evaluate_cli.main(["--task", task, "--backbone", args.backbone, "--adapter",
                                 str(out) if kind else "none", "--data", f"{args.world}/{task}_test.json",
                                 "--image-root", args.world, "--limit", str(args.test_limit[task]),
                                 "--k-test", str(args.k_test)])
    return {"task": task, "row": row, "kind": kind or "frozen", "main": metrics[evaluate_cli.MAIN_METRIC[task]],
            "metrics": metrics, "trainable_params": metrics["trainable_params"],
            "paper_params": train.get("paper_params", metrics["trainable_params"]),
            "train_seconds": train.get("train_seconds", 0.0), "steps": train.get("steps", 0),
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def _fmt(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def write_markdown(results: list[dict], args, path: Path, plot: Path, wall: float) -> None:
    from adapters.backbone import Backbone

    vocab = vocabulary_gap(args.world, Backbone.from_dirs(args.backbone).processor)
    lines = [f"| method | {' | '.join(f'{t}: {METRIC_NAME[t]} / trainable (paper Θ)' for t in args.tasks)} |",
             "|---|" + "---|" * len(args.tasks)]
    for row, _, _ in ROWS:
        cells = []
        for task in args.tasks:
            r = next((x for x in results if x["task"] == task and x["row"] == row), None)
            if r is None:
                cells.append("not run")
                continue
            note = " (= VCRA+QASN: no ITC)" if r.get("repeat") else ""
            cells.append(f"{r['main']:.1f} / {_fmt(r['trainable_params'])} ({_fmt(r['paper_params'])}){note}")
        lines.append(f"| {row} | {' | '.join(cells)} |")
    budget = (f"rank {args.rank}, seed {args.seed}, {args.epochs} epoch(s), batch {args.batch_size}, train entries "
              f"{args.train_limit}, test entries {args.test_limit}, retrieval k_test {args.k_test}")
    text = ["# Results: the Table 8 ablation on the shapes world", "",
            "## Ablation table (generated by `python -m training.ablation`)", "",
            f"Budget: {budget}. Summed wall time of the runs: {wall / 60:.1f} min on this machine.", "",
            "Cells: main metric on the test split / trainable parameters (the paper's Θ, which also counts "
            "VCRA's frozen seeded A, B).", "", *lines, "", f"![metric vs trainable parameters]({plot.name})", "",
            "## Acceptance check (computed)", "", *acceptance(results, args.tasks), "",
            "## Training loss of each run (computed from the fit logs)", "", *loss_curves(results, args), "",
            "## Parameter counts against rank (computed on this backbone, no training)", "",
            *param_table(args.backbone, args.tasks), "",
            "## Words the frozen decoder never produced in pretraining (computed)", "", *vocab, ""]
    old = path.read_text() if path.exists() else ""
    kept = old[old.index(ANALYSIS):] if ANALYSIS in old else ANALYSIS + "\n"
    path.write_text("\n".join(text) + "\n" + kept)


def acceptance(results: list[dict], tasks) -> list[str]:
    """Bar: VCRA+QASN(+MCAM) >= 98% of full fine-tune's main metric with <= 5% of LoRA's
    trainable parameters at equal rank."""
    out = ["| task | best UniTrans row | metric / full FT | params / LoRA (trainable) | params / LoRA (paper Θ) "
           "| bar met |", "|---|---|---|---|---|---|"]
    for task in tasks:
        get = {r["row"]: r for r in results if r["task"] == task}
        ours = [get[n] for n in ("VCRA+QASN", "VCRA+QASN+MCAM") if n in get and not get[n].get("repeat")]
        if not ours or "full fine-tune" not in get or "LoRA" not in get:
            out.append(f"| {task} | incomplete | | | | |")
            continue
        best, full, lora = max(ours, key=lambda r: r["main"]), get["full fine-tune"], get["LoRA"]
        ratio = best["main"] / full["main"] if full["main"] else float("nan")
        p_train = best["trainable_params"] / lora["trainable_params"]
        p_paper = best["paper_params"] / lora["paper_params"]
        met = ratio >= 0.98 and p_train <= 0.05
        out.append(f"| {task} | {best['row']} | {100 * ratio:.1f}% | {100 * p_train:.1f}% | {100 * p_paper:.1f}% "
                   f"| {'yes' if met else 'no'} |")
    return out


def write_plot(results: list[dict], tasks, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        frozen = None
        for r in results:
            if r["task"] != task or r.get("repeat"):
                continue
            if r["kind"] == "frozen":
                frozen = r["main"]
                continue
            ax.scatter(r["trainable_params"], r["main"], s=40)
            ax.annotate(r["row"], (r["trainable_params"], r["main"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        if frozen is not None:
            ax.axhline(frozen, color="grey", ls="--", lw=1, label=f"frozen ({frozen:.1f})")
            ax.legend(fontsize=7, loc="best")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel(METRIC_NAME[task])
        ax.set_title(task)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def param_table(backbone_dir: str, tasks, ranks=(4, 8, 16, 32)) -> list[str]:
    """Trainable parameters of each kind per task and rank on this backbone (no training),
    and VCRA+QASN as a share of LoRA at equal rank (trainable; paper Θ in brackets)."""
    from adapters.backbone import Backbone
    from training import adapters_io

    out = ["| task | rank | LoRA | VeRA (no sharing) | VCRA | VCRA+QASN | VCRA+QASN / LoRA |",
           "|---|---|---|---|---|---|---|"]
    for task in tasks:
        for rank in ranks:
            counts = {}
            for kind in ("lora", "vera", "vcra", "vcra-qasn"):
                bb = Backbone.from_dirs(backbone_dir)  # fresh: creating an adapter injects wrappers
                a = adapters_io.new_adapter(kind, bb, task=task, rank=rank, seed=0)
                counts[kind] = (adapters_io.trainable_count(a), adapters_io.paper_count(a))
            (lo, _), ours = counts["lora"], counts["vcra-qasn"]
            cells = " | ".join(f"{_fmt(t)} ({_fmt(p)})" if t != p else _fmt(t) for t, p in counts.values())
            out.append(f"| {task} | {rank} | {cells} | {100 * ours[0] / lo:.1f}% ({100 * ours[1] / lo:.1f}%) |")
    return out


def vocabulary_gap(world: str, processor) -> list[str]:
    """Share of each downstream task's target tokens (caption words, answers) that the
    pretraining captions never contain: the frozen decoder has never emitted them."""
    tok = processor.tokenizer
    seen: set[int] = set()
    for e in json.loads(Path(world, "pretrain_train.json").read_text()):
        seen.update(tok(e["caption"], add_special_tokens=False).input_ids)
    out = ["| task | target tokens never in a pretraining caption | e.g. |", "|---|---|---|"]
    for task, texts in (("caption", [e["caption"] for e in json.loads(Path(world, "caption_train.json").read_text())]),
                        ("vqa", [a for e in json.loads(Path(world, "vqa_train.json").read_text()) for a in e["answer"]])):
        ids = [i for t in texts for i in tok(t, add_special_tokens=False).input_ids]
        unseen = [i for i in ids if i not in seen]
        words = sorted({tok.convert_ids_to_tokens(i) for i in unseen})[:8]
        out.append(f"| {task} | {100 * len(unseen) / max(1, len(ids)):.1f}% of {len(ids)} | {', '.join(words)} |")
    return out


def _per_task(values: list[int], tasks) -> dict[str, int]:
    return dict(zip(tasks, values if len(values) == len(tasks) else values * len(tasks)))


def main(argv: list[str]) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", required=True, help="backbone directory (the shipped default)")
    p.add_argument("--world", required=True, help="shapes world directory (training.shapes.world --out)")
    p.add_argument("--work", required=True, help="directory for adapters, checkpoints, logs and results.json")
    p.add_argument("--results", default="docs/results.md", help="markdown table to write (plot: same name .png)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="tasks to run")
    p.add_argument("--rows", nargs="+", default=None, help="only these row names (default: all)")
    p.add_argument("--rank", type=int, default=16, help="rank of every low-rank method")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run")
    p.add_argument("--batch-size", type=int, default=32, help="batch size per run")
    p.add_argument("--full-lr", type=float, default=None, help="learning rate of the full fine-tune (default: fit's)")
    p.add_argument("--train-limit", type=int, nargs="+", default=[3000], help="training entries per task (1 or 3)")
    p.add_argument("--test-limit", type=int, nargs="+", default=[600], help="test entries per task (1 or 3)")
    p.add_argument("--k-test", type=int, default=16, help="retrieval: ITC candidates re-ranked by ITM")
    args = p.parse_args(argv)
    args.train_limit, args.test_limit = _per_task(args.train_limit, args.tasks), _per_task(args.test_limit, args.tasks)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results = json.loads(store.read_text()) if store.exists() else []  # rerun = resume: finished rows are kept
    t0 = time.perf_counter()
    for task in args.tasks:
        for row, kind, extra in ROWS:
            if args.rows and row not in args.rows:
                continue
            if any(r["task"] == task and r["row"] == row for r in results):
                continue
            if row == "VCRA+QASN+MCAM" and task != "retrieval":
                base = next((r for r in results if r["task"] == task and r["row"] == "VCRA+QASN"), None)
                if base is not None:
                    results.append({**base, "row": row, "repeat": True})
                continue
            results.append(run_row(args, task, row, kind, extra))
            store.write_text(json.dumps(results, indent=1))
            print(json.dumps({k: results[-1][k] for k in ("task", "row", "main", "trainable_params", "wall_seconds")}),
                  flush=True)
    store.write_text(json.dumps(results, indent=1))
    md = Path(args.results)
    md.parent.mkdir(parents=True, exist_ok=True)
    plot = md.with_suffix(".png")
    write_plot(results, args.tasks, plot)
    wall = sum(r["wall_seconds"] for r in results if not r.get("repeat"))
    write_markdown(results, args, md, plot, wall)
    print(f"wrote {md} and {plot}; summed wall time {wall / 60:.1f} min (this invocation "
          f"{(time.perf_counter() - t0) / 60:.1f} min)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
