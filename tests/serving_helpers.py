"""Real servers on loopback for the tests: uvicorn in a background thread, configured as `fdkd serve` runs it
(``running_server``), or a server process on a free port, waited on until ready (``start_server_process``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx
import uvicorn

from fdkd.serving.app import create_app
from fdkd.serving.server import uvicorn_config
from fdkd.serving.settings import ServeSettings


@contextlib.contextmanager
def running_server(run_dir, runtime_override=None, wait_ready: bool = True, **settings):
    serve_settings = ServeSettings(run_dir=run_dir, port=0, **settings)
    app = create_app(serve_settings, runtime_override)
    server = uvicorn.Server(uvicorn_config(app, serve_settings, log_level="error"))  # what `fdkd serve` runs
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    if wait_ready:
        while time.time() < deadline:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                break
            time.sleep(0.05)
    try:
        yield url, app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_process(cmd: list[str], env: dict | None = None, cwd=None, log=None) -> tuple[subprocess.Popen, str]:
    """``cmd --port P`` (P free) with ``env`` on top of ours, in ``cwd``; returns once /v2/health/ready is 200
    (120 s at most). Its output goes to pipes, or with ``log`` (an open file) there: a server answering many
    requests logs a line for each error, and a pipe nobody reads fills up and stalls it."""
    port = free_port()
    out = log if log is not None else subprocess.PIPE
    proc = subprocess.Popen([*cmd, "--port", str(port)], env={**os.environ, **(env or {})}, cwd=cwd,
                            stdout=out, stderr=out, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else f"server exited {proc.returncode}"
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not become ready")


def start_fdkd_serve(run_dir, *flags, env: dict | None = None, log=None) -> tuple[subprocess.Popen, str]:
    """``fdkd serve RUN_DIR FLAGS`` as a process (this interpreter), ready."""
    return start_server_process([sys.executable, "-m", "fdkd", "serve", str(run_dir), *flags], env, log=log)


def metric(text: str, name: str, **labels) -> float:
    """Sum of a Prometheus sample's values in exposition text, filtered by labels."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        rest = head[len(name):]
        if rest and not rest.startswith("{"):
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


def failed_gate_copy(served_run, tmp_path, name: str = "failed-gate"):
    """A copy of ``served_run`` whose ``student.onnx`` failed its validation gate (validation.json edited)."""
    run_dir = tmp_path / name
    shutil.copytree(served_run, run_dir)
    v = json.loads((run_dir / "validation.json").read_text())
    for a in v["artifacts"]:
        if a["name"] == "student.onnx":
            a["gate"]["passed"] = False
    (run_dir / "validation.json").write_text(json.dumps(v))
    return run_dir
