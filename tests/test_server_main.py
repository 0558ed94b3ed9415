"""`python -m server`: flags and UNITRANS_* settings, the message when the default
backbone is missing, a real subprocess serving and shutting down cleanly, and layering."""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from client import Client
from server import __main__ as server_main
from server.settings import DEFAULT_ADAPTERS, DEFAULT_BACKBONE, ROOT, Settings
from tests.test_server_harness import images, tiny_world, wait_ready


def test_defaults_resolve_from_the_package_not_the_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert s.backbone_dirs() == [DEFAULT_BACKBONE] and DEFAULT_BACKBONE == ROOT / "models" / "blip-shapes"
    assert s.adapters == [] and s.adapter_dirs() == [DEFAULT_ADAPTERS] and DEFAULT_ADAPTERS == ROOT / "models" / "adapters"
    assert (s.host, s.port) == ("127.0.0.1", 8000)


def test_environment_settings(monkeypatch):
    monkeypatch.setenv("UNITRANS_BACKBONE", '["/a", "/b"]')
    monkeypatch.setenv("UNITRANS_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("UNITRANS_API_KEY", "s3cret-value")
    s = Settings()
    assert s.backbone == [Path("/a"), Path("/b")] and s.max_batch_size == 7
    assert s.api_key.get_secret_value() == "s3cret-value" and "s3cret" not in repr(s)
    monkeypatch.setenv("UNITRANS_BACKBONE", "/c,/d")
    assert Settings().backbone == [Path("/c"), Path("/d")]
    assert Settings(port=9000).port == 9000  # flags (init kwargs) override the environment


def test_missing_default_backbone_says_how_to_build_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(server_main, "DEFAULT_BACKBONE", tmp_path / "blip-shapes")
    assert server_main.main([]) == 2
    err = capsys.readouterr().err
    assert "does not exist yet" in err and "training.shapes.pretrain" in err and "--backbone" in err
    assert server_main.main(["--backbone", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    assert server_main.main(["--backbone", str(tmp_path), "--port", "99999"]) == 2
    assert "invalid settings" in capsys.readouterr().err


def test_python_dash_m_server_serves_and_stops(tmp_path):
    world = tiny_world()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "UNITRANS_TORCH_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "server", "--backbone", str(world / "backbone"), "--adapters",
                             str(world / "adapters"), "--no-shipped-adapters", "--data", str(tmp_path), "--port", str(port),
                             "--log-level", "info"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        with Client(f"http://127.0.0.1:{port}") as c:
            wait_ready(c, proc, 90)
            assert c.caption(images(1)[0])["adapter"] == "caption"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM as its exit status
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err and "Traceback" not in err, err


def test_server_never_imports_training():
    for path in (ROOT / "server").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"training", "tests", "client"}, f"{path.name} imports {name}"


def test_importing_the_app_loads_no_model():
    # create_app with the default settings must not touch models/ (which may not exist yet)
    code = "import server.app; app = server.app.create_app(); assert app.state.services is None; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_unexpected_errors_are_a_logged_plain_500(caplog):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from server import errors

    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internal detail")

    @app.get("/expected")
    async def expected():
        raise errors.WrongTask("adapter 'x' is a 'vqa' adapter")

    with TestClient(app, raise_server_exceptions=False) as tc:
        r = tc.get("/boom")
        assert r.status_code == 500 and r.text == "Internal Server Error"  # nothing internal leaks
        assert "secret internal detail" in caplog.text and "Traceback" in caplog.text
        r = tc.get("/expected")
        assert r.status_code == 422
        assert r.json() == {"error": {"type": "wrong_task", "message": "adapter 'x' is a 'vqa' adapter"}}


def test_a_backbone_that_fails_to_load_stops_the_server_with_its_error(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "server", "--backbone", str(tmp_path / "broken"), "--port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    assert "BackboneLoadError" in proc.stderr and "config.json" in proc.stderr, proc.stderr[-2000:]
