"""`fdkd serve` as a real process: SIGTERM drain (the CPU image's install: tests/test_installed.py)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serving_helpers import metric, start_fdkd_serve

ROOT = Path(__file__).resolve().parents[1]
BODY = {"inputs": [{"name": "input", "shape": [1, 1, 40, 101], "datatype": "FP32", "data": [0.1] * 4040}]}


def test_sigterm_drains_in_flight_requests(served_run):
    proc, url = start_fdkd_serve(served_run, "--max-batch", "1", "--drain-seconds", "20",
                                 env={"FDKD_SERVE_DEBUG_DELAY_MS": "700"})
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        httpx.post(f"{url}/v2/models/served/infer", json=BODY, timeout=30).status_code)) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while metric(httpx.get(f"{url}/metrics").text, "fdkd_pending_requests") < 3:
        assert time.time() < deadline
        time.sleep(0.02)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(f"{url}/v2/health/ready")
    assert ready.status_code == 503 and "draining" in ready.json()["error"]
    late = httpx.post(f"{url}/v2/models/served/infer", json=BODY, timeout=10)
    assert late.status_code == 503 and late.headers["retry-after"]
    for t in threads:
        t.join(30)
    assert results == [200, 200, 200]  # in-flight and queued requests finished
    proc.wait(30)
    assert proc.returncode == 0 and time.time() - t0 < 20
    logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    assert any(rec.get("event") == "draining" for rec in logs)
    requests = [rec for rec in logs if rec.get("event") == "request"]
    assert requests and all("data" not in json.dumps(rec) for rec in requests)  # payloads are never logged


def test_http_granian_without_granian_names_the_extra(monkeypatch, tmp_path):
    """Granian is its own extra: without it `--http granian` exits with what to install, not a traceback."""
    from fdkd.serving.granian_server import serve_granian
    from fdkd.serving.settings import ServeSettings

    monkeypatch.setitem(sys.modules, "granian", None)  # import granian -> ImportError
    with pytest.raises(SystemExit, match=r"pip install 'fdkd\[granian\]'"):
        serve_granian(ServeSettings(run_dir=tmp_path, http="granian"))
