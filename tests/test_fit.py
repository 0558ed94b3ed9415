"""training.fit end to end on a tiny backbone and a tiny generated world: every task
trains and its file loads in the adapter table; the frozen backbone is untouched;
kill -9 + --resume reproduces an uninterrupted run exactly; torchrun with 2 processes
works; training.evaluate reads the files back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adapters
from adapters.backbone import Backbone
from adapters.kinds import KINDS
from tests.tiny import tiny_shapes_world
from training import evaluate as evaluate_cli
from training import fit
from training.data import DATASETS, load_json
from training.loop import LoopConfig, train

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 60-image shapes world and a tiny random backbone whose tokenizer knows its words."""
    return tiny_shapes_world(tmp_path_factory.mktemp("world"), seed=0, n=60)


def _args(world: Path, task: str, out: Path, *extra: str) -> list[str]:
    return ["--task", task, "--backbone", str(world / "bb"), "--train", str(world / f"{task}_train.json"),
            "--val", str(world / f"{task}_val.json"), "--image-root", str(world), "--out", str(out),
            "--batch-size", "4", "--no-progress", *extra]


@pytest.mark.parametrize("task, kind", [("caption", "vcra-qasn"), ("vqa", "vcra-qasn"), ("retrieval", "vcra-qasn"),
                                        ("retrieval", "lora"), ("caption", "vl-pet-large"), ("vqa", "vl-pet-small"),
                                        ("retrieval", "vl-pet-middle-x"), ("vqa", "vl-pet-middle-y")])
def test_each_task_trains_and_loads_in_the_table(world, tmp_path, task, kind):
    out = tmp_path / f"{task}.safetensors"
    summary = fit.main(_args(world, task, out, "--kind", kind, "--epochs", "1", "--train-limit", "16",
                             "--val-limit", "8", "--lr", "0.05"))
    assert summary["steps"] >= 2 and summary["val_main"] >= 0
    bb = Backbone.from_dirs(world / "bb")
    meta = adapters.AdapterTable(bb).load(task, out)
    # the file says the kind trained (a caption forward never runs QASN: that VCRA is plain "vcra")
    assert meta.kind == ("vcra" if (task, kind) == ("caption", "vcra-qasn") else kind)
    assert meta.trainable_params == summary["trainable_params"] > 0
    assert json.loads(json.dumps(meta.recipe))["task"] == task
    tensors = load_file(out)
    # VCRA's Λb, LoRA's B, VL-PET's up projections: zero at init
    zero_at_init = [t for k, t in tensors.items() if k.startswith(("lam_b.", "B.", "up.", "vup."))]
    assert zero_at_init and any(t.abs().sum() > 0 for t in zero_at_init), "nothing trained"
    log = [json.loads(line) for line in out.with_name(out.name + ".log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "done" and any("loss" in r for r in log)
    # the CLI evaluator loads the file as the server does and reports the same parameter count
    result = evaluate_cli.main(["--task", task, "--backbone", str(world / "bb"), "--adapter", str(out),
                                "--data", str(world / f"{task}_val.json"), "--image-root", str(world),
                                "--limit", "4"])
    assert result["trainable_params"] == summary["trainable_params"]


def test_max_steps_and_validation_curve(world, tmp_path):
    """--max-steps ends training early with the schedule spanning it; --eval-every logs a
    validation curve whose last point is the summary's val metric."""
    out = tmp_path / "vqa.safetensors"
    summary = fit.main(_args(world, "vqa", out, "--epochs", "3", "--train-limit", "16", "--val-limit", "4",
                             "--max-steps", "5", "--eval-every", "2"))
    assert summary["steps"] == 5
    log = [json.loads(line) for line in out.with_name(out.name + ".log.jsonl").read_text().splitlines()]
    curve = [r for r in log if r.get("event") == "val"]
    assert [r["step"] for r in curve] == [2, 4, 5]
    assert curve[-1]["main"] == summary["val_main"] == curve[-1]["accuracy"]
    lrs = [r["lr"] for r in log if "lr" in r]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # the cosine reached its end at step 5, not at 3 epochs
    assert "(default: 0)" in fit.build_parser().format_help().replace("\n", " ")


def test_only_adapter_parameters_train_and_backbone_is_unchanged(world, tmp_path):
    bb = Backbone.from_dirs(world / "bb")
    before = [(n, p, p.detach().clone()) for n, p in bb.named_parameters()]  # injection renames, so by identity
    adapter = adapters.create_adapter("vcra", bb, task="retrieve", rank=4, seed=1, qasn=True)
    init = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    ds = DATASETS["retrieval"](load_json(world / "retrieval_train.json")[:16], world)
    cfg = LoopConfig(task="retrieval", epochs=1, batch_size=8, lr=0.05, progress=False)
    train(bb, adapter, ds, cfg, ckpt_path=tmp_path / "c.pt", log_path=None, resume=False, recipe={})
    assert all(torch.equal(p, value) for _, p, value in before)
    assert not any(p.requires_grad for p in bb.parameters())
    assert any(not torch.equal(p, init[n]) for n, p in adapter.named_parameters())
    saved = torch.load(tmp_path / "c.pt", weights_only=False)
    assert set(saved["params"]) == {n for n, _ in adapter.named_parameters()}


def test_full_finetune_trains_a_copy(world, tmp_path):
    out = tmp_path / "full"
    summary = fit.main(_args(world, "caption", out, "--kind", "full", "--epochs", "1", "--train-limit", "8",
                             "--no-eval"))
    assert summary["trainable_params"] == sum(p.numel() for p in Backbone.from_dirs(world / "bb").parameters())
    assert (out / "model.safetensors").exists() and (out / "unitrans_full.json").exists()
    tuned, orig = load_file(out / "model.safetensors"), load_file(world / "bb" / "model.safetensors")
    assert any(not torch.equal(tuned[k], orig[k]) for k in orig)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
            "HF_HUB_OFFLINE": "1"}


def test_kill_and_resume_is_exact(world, tmp_path):
    common = ["--kind", "vcra-qasn", "--epochs", "4", "--train-limit", "24", "--seed", "5", "--no-eval",
              "--lr", "0.02"]
    full = tmp_path / "a.safetensors"
    subprocess.run([PY, "-m", "training.fit", *_args(world, "vqa", full, *common)], check=True, env=_env(),
                   cwd=REPO, capture_output=True, timeout=240)
    killed = tmp_path / "b.safetensors"
    ckpt = killed.with_name(killed.name + ".ckpt.pt")
    proc = subprocess.Popen([PY, "-m", "training.fit", *_args(world, "vqa", killed, *common)], env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists(), "the run finished before it could be killed"
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] < 4 and state["global_step"] > 0
    resumed = subprocess.run([PY, "-m", "training.fit", *_args(world, "vqa", killed, *common), "--resume"],
                             check=True, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["resumed_from"] == state["global_step"]
    a, b = load_file(full), load_file(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_recipe(world, tmp_path):
    out = tmp_path / "c.safetensors"
    fit.main(_args(world, "caption", out, "--epochs", "1", "--train-limit", "8", "--no-eval"))
    with pytest.raises(ValueError, match="different run"):
        fit.main(_args(world, "caption", out, "--epochs", "1", "--train-limit", "8", "--no-eval", "--resume",
                       "--lr", "0.5"))


def _free_port() -> int:
    """A port nothing listens on now: a fixed one collides when two suites run at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes(world, tmp_path):
    out = tmp_path / "ddp.safetensors"
    cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()), "-m", "training.fit",
           *_args(world, "retrieval", out, "--epochs", "1", "--train-limit", "16", "--val-limit", "4")]
    run = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    pairs = len(DATASETS["retrieval"](load_json(world / "retrieval_train.json")[:16], world))
    assert summary["world_size"] == 2 and summary["steps"] == (pairs // 2) // 4  # each rank: half, batches of 4
    adapters.AdapterTable(Backbone.from_dirs(world / "bb")).load("ddp", out)


@pytest.mark.parametrize("kind", ["lora", "vcra-qasn"])
def test_bf16_autocast_training(world, tmp_path, kind):
    out = tmp_path / "bf16.safetensors"
    summary = fit.main(_args(world, "vqa", out, "--kind", kind, "--epochs", "1", "--train-limit", "8",
                             "--precision", "bf16", "--no-eval"))
    assert summary["steps"] == 2 and summary["last_loss"] == summary["last_loss"]  # finite, not NaN
    assert out.exists()


def test_targets_without_vision_keep_the_vit_frozen_and_shared(world, tmp_path):
    """--targets without 'vision': the file's adapter never touches the ViT, so the server
    may share one vision pass (and cached image features) between such adapters."""
    out = tmp_path / "vqa-text.safetensors"
    summary = fit.main(_args(world, "vqa", out, "--epochs", "1", "--train-limit", "8", "--no-eval",
                             "--targets", "text", "cross", "decoder", "decoder_cross"))
    bb = Backbone.from_dirs(world / "bb")
    meta = adapters.AdapterTable(bb).load("vqa", out)
    assert meta.targets == ("text", "cross", "decoder", "decoder_cross")
    assert not KINDS[meta.kind].touches_vision(meta)
    assert not any("vision" in k for k in load_file(out))
    default = tmp_path / "vqa.safetensors"
    full = fit.main(_args(world, "vqa", default, "--epochs", "1", "--train-limit", "8", "--no-eval"))
    assert KINDS["vcra-qasn"].touches_vision(adapters.AdapterTable(bb).load("vqa", default))
    assert any("vision" in k for k in load_file(default))
    assert summary["trainable_params"] < full["trainable_params"]
