"""The bytes a server sends, by checkout: serve one run directory with a given checkout's code and print, per request,
the status, the body's sha256 and the headers (date, server, request id and length left out). The requests: V2
model metadata, config and readiness, server metadata, /openapi.json, a JSON and a binary infer of 3 seeded rows, a
malformed body, an unknown model, and a 1 s WAV to /v1/classify. Two checkouts that print the same lines serve the
same bytes; issue 20's refactor (the fdkd namespace) was checked this way:

    python -m bench.serve.served_bytes OLD_CHECKOUT RUN_DIR pipeline > old.txt   # before the fdkd namespace
    python -m bench.serve.served_bytes . RUN_DIR fdkd > new.txt && diff old.txt new.txt

MODULE is what ``python -m MODULE serve`` runs in that checkout (``pipeline`` before the namespace, ``fdkd``
after); the model name is the run's (its manifest's ``name``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import httpx
import numpy as np

LEFT_OUT = ("date", "x-request-id", "server", "content-length")


def _wav() -> bytes:
    t = np.arange(16000) / 16000
    pcm = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return buf.getvalue()


def _requests(url: str, model: str) -> dict[str, tuple]:
    meta = httpx.get(f"{url}/v2/models/{model}").json()
    shape, name = meta["inputs"][0]["shape"][1:], meta["inputs"][0]["name"]
    x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    js = {"content-type": "application/json"}
    infer = f"/v2/models/{model}/infer"
    doc = {"inputs": [{"name": name, "shape": [3, *shape], "datatype": "FP32", "data": x.ravel().tolist()}]}
    head = json.dumps({"inputs": [{"name": name, "shape": [3, *shape], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": meta["outputs"][0]["name"], "parameters": {"binary_data": True}}]}).encode()
    return {
        "meta": ("GET", f"/v2/models/{model}", None, {}),
        "config": ("GET", f"/v2/models/{model}/config", None, {}),
        "ready": ("GET", f"/v2/models/{model}/versions/1/ready", None, {}),
        "v2": ("GET", "/v2", None, {}),
        "openapi": ("GET", "/openapi.json", None, {}),
        "json": ("POST", infer, json.dumps(doc).encode(), js),
        "bad": ("POST", infer, b'{"inputs": [{"name": 1}]}', js),
        "missing": ("GET", "/v2/models/nope", None, {}),
        "binary": ("POST", infer, head + x.tobytes(), {"inference-header-content-length": str(len(head)),
                                                       "content-type": "application/octet-stream"}),
        "classify": ("POST", "/v1/classify", _wav(), {"content-type": "audio/wav"}),
    }


def responses(checkout: str, run_dir: str, module: str, model: str) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(checkout).resolve()), FDKD_QUIET="1")
    proc = subprocess.Popen([sys.executable, "-m", module, "serve", str(Path(run_dir).resolve()), "--port", str(port)],
                            cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with_server = proc.poll() is None
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not with_server:
                raise SystemExit(f"`python -m {module} serve` exited with {proc.returncode}")
            time.sleep(0.2)
        lines = []
        for key, (method, path, body, headers) in _requests(url, model).items():
            r = httpx.request(method, url + path, content=body, headers=headers)
            kept = sorted((h, v) for h, v in r.headers.items() if h not in LEFT_OUT)
            lines.append(f"{key} {r.status_code} {hashlib.sha256(r.content).hexdigest()[:16]} {json.dumps(kept)}")
        return lines
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    checkout, run_dir, module = sys.argv[1:4]
    model = json.loads((Path(run_dir) / "manifest.json").read_text())["name"]
    for line in responses(checkout, run_dir, module, model):
        print(line)


if __name__ == "__main__":
    main()
