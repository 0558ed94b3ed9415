"""A unitrans server in a child process on a free loopback port, for the tools that drive
one (`docs.examples`, `bench/serve.py`): start it, wait until /readyz says ready, stop it.

    proc, url = local.start(["--backbone", "models/blip-shapes", "--data", "/tmp/d"])
    ...
    local.stop(proc)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from client.api import Client
from client.errors import UnitransError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], *, module: str = "server", env: dict | None = None, cwd=None,
          ready_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`python -m <module> <args> --host 127.0.0.1 --port <free>`; returns (process, URL) once
    /readyz answers ready. A server that exits or is not ready within `ready_s` is stopped
    (it must not outlive its caller) and RuntimeError names its exit code."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + ready_s
    with Client(url, timeout=5) as c:
        while True:
            try:
                if c.ready()["ready"]:
                    return proc, url
            except UnitransError:  # ConnectionFailed while not listening yet, or a 503 while loading
                pass
            if proc.poll() is not None or time.time() > deadline:
                code = proc.poll()
                stop(proc)
                raise RuntimeError(f"the server did not come up (exit code {code})")
            time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (uvicorn's graceful shutdown), then wait; SIGKILL if it hangs."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
