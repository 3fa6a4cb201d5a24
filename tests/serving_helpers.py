"""A real uvicorn server on loopback, in a background thread, configured as `fdkd serve` runs it."""

from __future__ import annotations

import contextlib
import threading
import time

import httpx
import uvicorn

from serving.app import create_app
from serving.server import uvicorn_config
from serving.settings import ServeSettings


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
