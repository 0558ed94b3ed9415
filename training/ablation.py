"""The ablation of the paper's Table 8, on the shapes world, for all three tasks.

    python -m training.ablation --backbone models/blip-shapes --world /tmp/shapes-world \
        --work /tmp/ablation --results docs/results.md --seeds 0 1 2 --lr-search 3e-4 3e-3 2e-2

Rows: frozen backbone, full fine-tune, LoRA, VeRA without cross-modal sharing (one
pair per modality, the paper's '+scaling vectors'), VCRA, VCRA+QASN, VCRA+QASN+MCAM,
and VL-PET (the second seed paper) at its four granularities, all at one rank (VL-PET:
its modules' bottleneck). Every row is a real `training.fit` run (same flags, seed and budget)
whose output file is evaluated by `training.evaluate` on the test split, loaded
through the AdapterTable as the server loads it. MCAM regularises ITC, so it only
changes retrieval; for caption and VQA that row repeats VCRA+QASN (no extra run).
With --lr-search, each kind's learning rate per task is first chosen on the VALIDATION
split (seed 0, same budget; fit's val metric), never on test. With several --seeds the
cells are mean ± std. Writes `<work>/results.json`, the markdown table to --results,
a PNG of the main metric against trainable parameters (log x) and one of the
validation metric against training steps (fit --eval-every) beside it.

Video tasks (--tasks video-qa video-retrieval, on a world made with --clips; see
training/ablation_video.py) train on the world's clips with --num-frames and the temporal
module where the kind has one, and write their own block of the same results file: a
video run leaves the image table alone and an image run keeps the video block.
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

import numpy as np

from training import ablation_video as video
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
    ("VL-PET-large", "vl-pet-large", []),  # VL-PET (ICCV 2023) at its four granularities of G
    ("VL-PET-middle_X", "vl-pet-middle-x", []),
    ("VL-PET-middle_Y", "vl-pet-middle-y", []),
    ("VL-PET-small", "vl-pet-small", []),
]
TASKS = ("caption", "vqa", "retrieval")  # image tasks; video.VIDEO_TASKS beside them
ANALYSIS = "<!-- analysis: hand-written below, kept when the script rewrites the table -->"
METRIC_NAME = {"caption": "CIDEr (×100)", "vqa": "VQA acc. (%)", "retrieval": "R@mean (%)", **video.METRIC_NAME}


def _out_path(work: str, task: str, row: str, kind: str | None) -> Path:
    slug = row.lower().replace(" ", "-").replace("+", "-").replace("(", "").replace(")", "")
    return Path(work) / task / (slug if kind == "full" else f"{slug}.safetensors")


def loss_curves(results: list[dict]) -> list[str]:
    """First and last logged training loss of every trained run (from fit's JSONL logs):
    a loss still falling at the end means the budget, not the method, set the metric."""
    out = ["| task | method | seed | steps | loss at step 10 | loss at 50% | final loss |",
           "|---|---|---|---|---|---|---|"]
    for r in results:
        log = Path(r.get("log") or "")
        if r["kind"] == "frozen" or r.get("repeat") or not log.is_file():
            continue
        steps = [x for x in map(json.loads, log.read_text().splitlines()) if "step" in x and "loss" in x]
        if steps:
            mid = steps[len(steps) // 2]
            out.append(f"| {r['task']} | {r['row']} | {r['seed']} | {steps[-1]['step']} | {steps[0]['loss']:.3f} | "
                       f"{mid['loss']:.3f} | {steps[-1]['loss']:.3f} |")
    return out


def run_row(args, task: str, row: str, kind: str | None, extra: list[str], seed: int = 0, lr: float | None = None,
            tag: str = "") -> dict:
    out = _out_path(args.work, task, f"{row} s{seed}" + (f" lr{lr:g}" if tag else ""), kind)
    t0 = time.perf_counter()
    train, ft, vflags = {}, video.fit_task(task), video.fit_flags(args, task, kind)  # ft: fit's --task
    if kind is not None:
        flags = ["--task", ft, "--kind", kind, "--backbone", args.backbone, "--image-root", args.world,
                 "--train", video.data_file(args.world, task, "train"),
                 "--val", video.data_file(args.world, task, "val"),
                 "--out", str(out), "--rank", str(args.rank), "--seed", str(seed), "--epochs", str(args.epochs),
                 "--batch-size", str(args.batch_size), "--train-limit", str(args.train_limit[task]),
                 "--val-limit", str(args.val_limit), "--eval-every", str(args.eval_every), "--no-progress",
                 "--resume", *extra, *vflags]
        if lr is not None:
            flags += ["--lr", str(lr)]
        if tag == "lr-search" and args.lr_search_steps:
            flags += ["--max-steps", str(args.lr_search_steps)]
        train = fit.main(flags)
    if tag == "lr-search":  # chosen on validation only: no test evaluation
        return {"task": task, "row": row, "kind": kind, "seed": seed, "lr": lr, "val_main": train["val_main"]}
    metrics = evaluate_cli.main(["--task", ft, "--backbone", args.backbone, "--adapter",
                                 str(out) if kind else "none", "--data", video.data_file(args.world, task, "test"),
                                 "--image-root", args.world, "--limit", str(args.test_limit[task]),
                                 "--k-test", str(args.k_test), *video.eval_flags(args, task)])
    return {"task": task, "row": row, "kind": kind or "frozen", "seed": seed, "lr": lr, "log": str(out) + ".log.jsonl",
            "main": metrics[evaluate_cli.MAIN_METRIC[ft]], "val_main": train.get("val_main"),
            "temporal": "--temporal" in vflags,
            "metrics": metrics, "trainable_params": metrics["trainable_params"],
            "paper_params": train.get("paper_params", metrics["trainable_params"]),
            "train_seconds": train.get("train_seconds", 0.0), "steps": train.get("steps", 0),
            "wall_seconds": round(time.perf_counter() - t0, 1)}


def _runs(results: list[dict], task: str, row: str) -> list[dict]:
    return [r for r in results if r["task"] == task and r["row"] == row and "main" in r]


def _mean_std(runs: list[dict]) -> tuple[float, float]:
    values = np.array([r["main"] for r in runs], dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _stat(values: list[float]) -> str:
    """'m ± s (n=k)' over seeds (sample std), or 'm' for one run."""
    v = np.array(values, dtype=float)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f} (n={len(v)})" if len(v) > 1 else f"{v.mean():.1f}"


def _cell(runs: list[dict]) -> str:
    return _stat([r["main"] for r in runs])


def _fmt(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def write_markdown(results: list[dict], args, tasks: list[str], path: Path, plots: list[Path], wall: float) -> None:
    """The image tasks' table and sections: everything above the video block (kept) and ANALYSIS."""
    from adapters.backbone import Backbone

    vocab = vocabulary_gap(args.world, Backbone.from_dirs(args.backbone).processor)
    lines = [f"| method | {' | '.join(f'{t}: {METRIC_NAME[t]} / trainable (paper Θ) / lr' for t in tasks)} |",
             "|---|" + "---|" * len(tasks)]
    for row, _, _ in ROWS:
        cells = []
        for task in tasks:
            runs = _runs(results, task, row)
            if not runs:
                cells.append("not run")
                continue
            r = runs[0]
            note = " (= VCRA+QASN: no ITC)" if r.get("repeat") else ""
            lr = f" / {r['lr']:g}" if r.get("lr") else ""
            cells.append(f"{_cell(runs)} / {_fmt(r['trainable_params'])} ({_fmt(r['paper_params'])}){lr}{note}")
        lines.append(f"| {row} | {' | '.join(cells)} |")
    search = [r for r in results if "val_main" in r and "main" not in r]
    lr_lines = ["| task | method | learning rate | validation metric |", "|---|---|---|---|"]
    lr_lines += [f"| {r['task']} | {r['row']} | {r['lr']:g} | {r['val_main']:.1f} |" for r in search]
    budget = (f"rank {args.rank}, seeds {args.seeds}, {args.epochs} epoch(s), batch {args.batch_size}, train "
              f"entries { {t: args.train_limit[t] for t in tasks} }, test entries "
              f"{ {t: args.test_limit[t] for t in tasks} }, retrieval k_test {args.k_test}")
    text = ["# Results: the Table 8 ablation on the shapes world", "",
            "## Ablation table (generated by `python -m training.ablation`)", "",
            f"Budget: {budget}. Summed wall time of the runs: {wall / 60:.1f} min on this machine.", "",
            "Cells: main metric on the test split (mean ± std over seeds) / trainable parameters (the paper's Θ, "
            "which also counts VCRA's frozen seeded A, B) / learning rate.", "", *lines, "",
            *[f"![{p.stem}]({p.name})" for p in plots], "",
            "## Learning rates chosen on the validation split (seed 0)", "", *(lr_lines if search else ["none searched"]),
            "", "## Acceptance check (computed)", "", *acceptance(results, tasks), "",
            "## Training loss of each run (computed from the fit logs)", "", *loss_curves(results), "",
            "## Parameter counts against rank (computed on this backbone, no training)", "",
            *param_table(args.backbone, tasks), "",
            "## Words the frozen decoder never produced in pretraining (computed)", "", *vocab, ""]
    old = path.read_text() if path.exists() else ""
    kept = old[old.index(ANALYSIS):] if ANALYSIS in old else ANALYSIS + "\n"
    block = video.block_of(old)  # a video run's block survives an image run
    path.write_text("\n".join(text) + "\n" + (block + "\n" if block else "") + kept)


def acceptance(results: list[dict], tasks) -> list[str]:
    """Bar: VCRA+QASN(+MCAM) >= 97% of full fine-tune's main metric (means over seeds) with
    <= 5% of LoRA's trainable parameters at equal rank."""
    out = ["| task | best UniTrans row | metric / full FT | params / LoRA (trainable) | params / LoRA (paper Θ) "
           "| bar met |", "|---|---|---|---|---|---|"]
    for task in tasks:
        ours = [(n, _runs(results, task, n)) for n in ("VCRA+QASN", "VCRA+QASN+MCAM")]
        ours = [(n, runs) for n, runs in ours if runs and not runs[0].get("repeat")]
        full, lora = _runs(results, task, "full fine-tune"), _runs(results, task, "LoRA")
        if not ours or not full or not lora:
            out.append(f"| {task} | incomplete | | | | |")
            continue
        name, best = max(ours, key=lambda x: _mean_std(x[1])[0])
        ratio = _mean_std(best)[0] / _mean_std(full)[0] if _mean_std(full)[0] else float("nan")
        p_train = best[0]["trainable_params"] / lora[0]["trainable_params"]
        p_paper = best[0]["paper_params"] / lora[0]["paper_params"]
        met = ratio >= 0.97 and p_train <= 0.05
        out.append(f"| {task} | {name} | {100 * ratio:.1f}% | {100 * p_train:.1f}% | {100 * p_paper:.1f}% "
                   f"| {'yes' if met else 'no'} |")
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plot(results: list[dict], tasks, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row, _, _ in ROWS:
            runs = _runs(results, task, row)
            if not runs or runs[0].get("repeat"):
                continue
            mean, std = _mean_std(runs)
            if runs[0]["kind"] == "frozen":
                ax.axhline(mean, color="grey", ls="--", lw=1, label=f"frozen ({mean:.1f})")
                continue
            ax.errorbar(runs[0]["trainable_params"], mean, yerr=std, fmt="o", ms=5, capsize=3)
            ax.annotate(row, (runs[0]["trainable_params"], mean), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.legend(fontsize=7, loc="best")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel(METRIC_NAME[task])
        ax.set_title(task)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_curves(results: list[dict], tasks, path: Path, rows=("full fine-tune", "LoRA", "VCRA+QASN",
                                                                 "VCRA+QASN+MCAM")) -> None:
    """Validation main metric against training steps (fit --eval-every), seed 0."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row in rows:
            runs = [r for r in _runs(results, task, row) if not r.get("repeat") and r.get("log")]
            if not runs or not Path(runs[0]["log"]).is_file():
                continue
            points = [json.loads(x) for x in Path(runs[0]["log"]).read_text().splitlines() if '"event": "val"' in x]
            if points:
                ax.plot([p["step"] for p in points], [p["main"] for p in points], marker=".", label=row)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"validation {METRIC_NAME[task]}")
        ax.set_title(task)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def param_table(backbone_dir: str, tasks, ranks=(4, 8, 16, 32)) -> list[str]:
    """Trainable parameters of each kind per task and rank on this backbone (no training),
    and VCRA+QASN as a share of LoRA at equal rank (trainable; paper Θ in brackets)."""
    from adapters.backbone import Backbone
    from training import adapters_io

    out = ["| task | rank | LoRA | VeRA (no sharing) | VCRA | VCRA+QASN | VL-PET-large | VL-PET-small "
           "| VCRA+QASN / LoRA |", "|---|---|---|---|---|---|---|---|---|"]
    for task in tasks:
        for rank in ranks:
            counts = {}
            for kind in ("lora", "vera", "vcra", "vcra-qasn", "vl-pet-large", "vl-pet-small"):
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
    p = argparse.ArgumentParser(prog="python -m training.ablation", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", required=True, help="backbone directory (the shipped default)")
    p.add_argument("--world", required=True, help="shapes world directory (training.shapes.world --out)")
    p.add_argument("--work", required=True, help="directory for adapters, checkpoints, logs and results.json")
    p.add_argument("--results", default="docs/results.md", help="markdown table to write (plots: same name .png)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS + video.VIDEO_TASKS,
                   help="tasks to run; video-qa and video-retrieval need a world made with --clips")
    p.add_argument("--rows", nargs="+", default=None,
                   help=f"only these row names (default: all; video tasks: {', '.join(video.ROWS)})")
    p.add_argument("--num-frames", type=int, default=8, help="video tasks: frames sampled per clip (fit and test)")
    p.add_argument("--rank", type=int, default=16, help="rank of every low-rank method")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every row (mean ± std)")
    p.add_argument("--multi-seed-rows", nargs="+", default=["frozen", "full fine-tune", "LoRA", "VCRA+QASN",
                                                            "VCRA+QASN+MCAM"],
                   help="rows run with every --seeds; the others with the first seed only")
    p.add_argument("--lr-search", type=float, nargs="*", default=[],
                   help="candidate learning rates, each kind's chosen per task on the validation split")
    p.add_argument("--lr-search-steps", type=int, default=0,
                   help="steps of each learning-rate candidate's run (0: the full budget)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per run")
    p.add_argument("--batch-size", type=int, default=32, help="batch size per run")
    p.add_argument("--train-limit", type=int, nargs="+", default=[3000], help="training entries per task (1 or 3)")
    p.add_argument("--val-limit", type=int, default=300, help="validation entries (lr search and curves)")
    p.add_argument("--eval-every", type=int, default=0, help="validation curve point every N steps (0: end only)")
    p.add_argument("--test-limit", type=int, nargs="+", default=[600], help="test entries per task (1 or 3)")
    p.add_argument("--k-test", type=int, default=16, help="retrieval: ITC candidates re-ranked by ITM")
    p.add_argument("--merge", nargs="+", default=[], metavar="WORK",
                   help="first add the finished runs of these other --work directories (e.g. tasks run by parallel "
                        "processes, one per core); their adapters and logs stay where they are")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: write the table and plots from the runs <work>/results.json holds")
    args = p.parse_args(argv)
    args.train_limit, args.test_limit = _per_task(args.train_limit, args.tasks), _per_task(args.test_limit, args.tasks)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results = json.loads(store.read_text()) if store.exists() else []  # rerun = resume: finished runs are kept
    for other in args.merge:
        key = lambda r: (r["task"], r["row"], r["seed"], r.get("lr"), "main" in r)  # noqa: E731
        known = {key(r) for r in results}
        results += [r for r in json.loads((Path(other) / "results.json").read_text()) if key(r) not in known]

    def done(task, row, seed, search_lr=None) -> bool:
        return any(r["task"] == task and r["row"] == row and r["seed"] == seed and
                   (("main" not in r and r["lr"] == search_lr) if search_lr is not None else "main" in r)
                   for r in results)

    def record(r: dict) -> None:
        results.append(r)
        store.write_text(json.dumps(results, indent=1))
        print(json.dumps({k: r.get(k) for k in ("task", "row", "seed", "lr", "main", "val_main")}), flush=True)

    def wanted(task, row) -> bool:
        return row in (args.rows or (video.ROWS if task in video.VIDEO_TASKS else [r for r, _, _ in ROWS]))

    t0 = time.perf_counter()
    for task in [] if args.render_only else args.tasks:
        for row, kind, extra in ROWS:
            if not wanted(task, row) or (row == "VCRA+QASN+MCAM" and video.fit_task(task) != "retrieval"):
                continue
            lr = None
            if kind is not None and args.lr_search:
                for cand in args.lr_search:
                    if not done(task, row, args.seeds[0], cand):
                        record(run_row(args, task, row, kind, extra, args.seeds[0], cand, tag="lr-search"))
                tried = [r for r in results if r["task"] == task and r["row"] == row and "main" not in r]
                lr = max(tried, key=lambda r: r["val_main"])["lr"]
            for seed in args.seeds if row in args.multi_seed_rows else args.seeds[:1]:
                if not done(task, row, seed):
                    record(run_row(args, task, row, kind, extra, seed, lr))
        if wanted(task, "VCRA+QASN+MCAM") and video.fit_task(task) != "retrieval":  # MCAM only changes ITC
            for base in _runs(results, task, "VCRA+QASN"):
                if not done(task, "VCRA+QASN+MCAM", base["seed"]):
                    results.append({**base, "row": "VCRA+QASN+MCAM", "repeat": True})
    store.write_text(json.dumps(results, indent=1))
    md = Path(args.results)
    md.parent.mkdir(parents=True, exist_ok=True)
    image, clips = [t for t in args.tasks if t in TASKS], [t for t in args.tasks if t in video.VIDEO_TASKS]
    for tasks, suffix in ((image, ""), (clips, "_video")):  # each group its own plots and part of the file
        if not tasks:
            continue
        plots = [md.with_name(f"{md.stem}{suffix}.png"), md.with_name(f"{md.stem}{suffix}_steps.png")]
        write_plot(results, tasks, plots[0])
        write_curves(results, tasks, plots[1])
        wall = sum(r.get("wall_seconds", 0) for r in results if not r.get("repeat") and r["task"] in tasks)
        if tasks is image:
            write_markdown(results, args, image, md, plots, wall)
        else:
            rows = [r for r, _, _ in ROWS if r in (args.rows or video.ROWS)]
            video.write_block(md, video.render(results, args, clips, rows, plots, wall), ANALYSIS)
        print(f"wrote {md} ({', '.join(tasks)}) and {', '.join(map(str, plots))}; summed wall time "
              f"{wall / 60:.1f} min (this invocation {(time.perf_counter() - t0) / 60:.1f} min)")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
