"""The CLI (`python -m client ...`) against a real server, the client's typed
errors, and the client's independence from the rest of the project."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from client import Client, NotFoundError, OverloadedError, ValidationError
from client.__main__ import main
from client.errors import ServerError, from_response
from tests.test_server_harness import images, running_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def url():
    with running_server() as u:
        yield u


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    paths = []
    for i, data in enumerate(images(3, seed=31)):
        (d / f"im{i}.png").write_bytes(data)
        paths.append(str(d / f"im{i}.png"))
    return paths


def run(capsys, url, *argv) -> tuple[int, dict | None, str]:
    code = main(["--url", url, *argv])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if out.out.strip() else None), out.err


def test_caption_vqa_adapters_health(capsys, url, files):
    code, out, _ = run(capsys, url, "caption", files[0], "--adapter", "caption-b")
    assert code == 0 and out["adapter"] == "caption-b"
    with Client(url) as c:
        assert out == c.caption(files[0], adapter="caption-b")
    code, out, _ = run(capsys, url, "vqa", files[0], "is there a star ?", "--candidates", "yes", "no")
    assert code == 0 and out["answer"] in ("yes", "no") and set(out["scores"]) == {"yes", "no"}
    code, out, _ = run(capsys, url, "adapters")
    assert code == 0 and "caption" in [a["name"] for a in out["adapters"]]
    code, out, _ = run(capsys, url, "vqa", files[0], "is there a star ?", "--beams", "1", "--max-new-tokens", "1")
    with Client(url) as c:
        assert code == 0 and out == c.vqa(files[0], "is there a star ?", num_beams=1, max_new_tokens=1)
    assert out["answer"] and " " not in out["answer"]  # one token, never empty
    code, out, _ = run(capsys, url, "adapters", "--load", "vqa-b", "--pin")
    assert code == 0 and out["loaded"] and out["pinned"]
    code, out, _ = run(capsys, url, "adapters", "--unload", "vqa-b")
    assert code == 0 and not out["loaded"]
    code, out, _ = run(capsys, url, "health")
    assert code == 0 and out["health"] == {"status": "ok"} and out["ready"]["ready"]


def test_fanout_from_the_cli(capsys, url, files):
    code, out, _ = run(capsys, url, "caption", files[1], "--adapters", "caption", "none", "caption-lora")
    assert code == 0 and [r["adapter"] for r in out["per_adapter"]] == ["caption", "none", "caption-lora"]
    with Client(url) as c:
        assert out["per_adapter"] == [c.caption(files[1], adapter=a) for a in ("caption", "none", "caption-lora")]
    code, out, _ = run(capsys, url, "vqa", files[1], "is there a star ?", "--adapters", "vqa", "vqa-b")
    assert code == 0 and [r["adapter"] for r in out["per_adapter"]] == ["vqa", "vqa-b"]
    code, out, _ = run(capsys, url, "retrieve", "--text", "a red circle", "--images", *files, "--adapters",
                       "retrieval", "none")
    assert code == 0 and [len(r["results"]) for r in out["per_adapter"]] == [3, 3]


def test_galleries_and_retrieve(capsys, url, files):
    assert run(capsys, url, "gallery", "create", "cli-g")[0] == 0
    code, out, _ = run(capsys, url, "gallery", "add", "cli-g", *files)
    assert code == 0 and out["added"] == ["im0.png", "im1.png", "im2.png"]
    code, out, _ = run(capsys, url, "retrieve", "--text", "a red circle", "--gallery", "cli-g", "--top-k", "2")
    assert code == 0 and len(out["results"]) == 2 and out["direction"] == "text_to_image"
    code, out, _ = run(capsys, url, "retrieve", "--image", files[1], "--texts", "a=a red circle", "b=one yellow star")
    assert code == 0 and sorted(h["id"] for h in out["results"]) == ["a", "b"]
    code, out, _ = run(capsys, url, "retrieve", "--text", "two green triangles", "--images", *files, "--no-rerank")
    assert code == 0 and out["results"][0]["score"] == out["results"][0]["itc"]
    assert "cli-g" in [g["name"] for g in run(capsys, url, "gallery", "list")[1]["galleries"]]
    assert run(capsys, url, "gallery", "delete", "cli-g")[1] == {"deleted": "cli-g"}


def test_errors_exit_1_with_the_message(capsys, url, files):
    code, out, err = run(capsys, url, "caption", files[0], "--adapter", "nope")
    assert code == 1 and out is None and "404 not_found" in err and "nope" in err
    code, _, err = run(capsys, url, "caption", files[0], "--adapter", "vqa")
    assert code == 1 and "422 wrong_task" in err
    code, _, err = run(capsys, url, "caption", "/no/such/file.png")
    assert code == 1 and "No such file" in err
    assert main(["--url", "http://127.0.0.1:9", "health"]) == 1  # nothing listens on port 9
    assert "ConnectError" in capsys.readouterr().err


def test_python_dash_m_client_in_a_subprocess(url, files):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNITRANS_URL": url}
    proc = subprocess.run([sys.executable, "-m", "client", "caption", files[2]], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["adapter"] == "caption"


def test_typed_errors_from_responses():
    err = from_response(503, {"error": {"type": "overloaded", "message": "full"}}, httpx.Headers({"Retry-After": "3"}))
    assert isinstance(err, OverloadedError) and err.retry_after == 3 and err.message == "full"
    assert isinstance(from_response(404, {"error": {"type": "not_found", "message": "x"}}, {}), NotFoundError)
    assert isinstance(from_response(422, {"error": {"type": "wrong_task", "message": "x"}}, {}), ValidationError)
    plain = from_response(500, "Internal Server Error", {})
    assert isinstance(plain, ServerError) and plain.message == "Internal Server Error"


def test_client_imports_nothing_of_ours():
    ours = {"server", "adapters", "training", "tests", "bench"}
    for path in (ROOT / "client").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ours, f"{path.name} imports {name}"
