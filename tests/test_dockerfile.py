"""What can be checked of the Dockerfile without a Docker engine: every COPY source
exists and is not excluded by .dockerignore, the user is not root, a HEALTHCHECK
probes the server, and the CMD runs `python -m server` on 0.0.0.0:8000."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(pre, pat.rstrip("/")) for pat in patterns for pre in prefixes)


def exec_form(rest: str) -> list[str]:
    return json.loads(rest) if rest.startswith("[") else shlex.split(rest)


def test_every_copied_path_exists_and_is_in_the_build_context():
    copies = [rest for word, rest in instructions() if word in ("COPY", "ADD")]
    assert copies
    for rest in copies:
        args = [a for a in exec_form(rest) if not a.startswith("--")]
        assert not any(a.startswith("--from") for a in exec_form(rest)), "no multi-stage copies expected"
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"
            assert not ignored(src.rstrip("/")), f"COPY source {src} is excluded by .dockerignore"
    sources = {src.rstrip("/") for rest in copies for src in exec_form(rest)[:-1]}
    # everything `python -m server` imports, and the default models
    assert {"adapters", "server", "client", "models", "pyproject.toml"} <= sources


def test_runs_as_a_non_root_user():
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    words = [w for w, _ in instructions()]
    assert words.index("USER") < words.index("CMD")


def test_copied_files_are_made_readable_for_that_user():
    """Temp-file writers leave 0600 files (models/blip-shapes/model.safetensors is one); COPY keeps modes."""
    runs = [rest for word, rest in instructions() if word == "RUN"]
    words = [w for w, _ in instructions()]
    chmod = next(i for i, (w, rest) in enumerate(instructions()) if w == "RUN" and "chmod -R a+rX /app" in rest)
    assert chmod > max(i for i, w in enumerate(words) if w == "COPY") and runs


def test_healthcheck_probes_the_server():
    checks = [rest for word, rest in instructions() if word == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "CMD" in checks[0] and re.search(r"127\.0\.0\.1:.*/(readyz|healthz)", checks[0])


def env() -> dict[str, str]:
    out = {}
    for word, rest in instructions():
        if word == "ENV":
            out.update(dict(shlex.split(part)[0].split("=", 1) for part in rest.split() if "=" in part))
    return out


def test_cmd_and_healthcheck_read_one_port_setting():
    """CMD passes no --port or --host: the server reads UNITRANS_PORT / UNITRANS_HOST, the
    probe reads UNITRANS_PORT, so `-e UNITRANS_PORT=9000` moves both (issue 14)."""
    cmds = [exec_form(rest) for word, rest in instructions() if word == "CMD"]
    assert len(cmds) == 1
    cmd = cmds[0]
    assert cmd[:3] == ["python", "-m", "server"] and "--port" not in cmd and "--host" not in cmd
    assert env()["UNITRANS_HOST"] == "0.0.0.0" and env()["UNITRANS_PORT"] == "8000"
    check = next(rest for word, rest in instructions() if word == "HEALTHCHECK")
    assert "os.environ.get('UNITRANS_PORT'" in check
    assert ("EXPOSE", "8000") in instructions()
    # and the server really takes its port from that variable
    import os
    from unittest import mock

    from server.settings import Settings
    with mock.patch.dict(os.environ, {"UNITRANS_PORT": "9000", "UNITRANS_HOST": "0.0.0.0"}):
        assert (Settings().host, Settings().port) == ("0.0.0.0", 9000)


def test_cpu_by_default_with_a_cuda_build_argument():
    args = dict(rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest)
    assert args["TORCH_INDEX_URL"].endswith("/cpu") and args["DEVICE"] == "cpu"
    text = (ROOT / "Dockerfile").read_text()
    assert "UNITRANS_DEVICE=${DEVICE}" in text and "--build-arg TORCH_INDEX_URL=" in text


def test_torch_pin_matches_pyproject():
    pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f'"torch=={pin}"' in (ROOT / "Dockerfile").read_text()
