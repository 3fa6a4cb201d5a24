"""Bounded HTTP load on loopback against `fdkd serve`, beside the same runtime called in-process.

    python bench/serve_load.py runs/avdigits                 # after `fdkd run`
    python bench/serve_load.py runs/avdigits --seconds 5 --delay-ms 2

Starts the server as a subprocess on 127.0.0.1, then for concurrency 1, 8, 32, 64 and JSON and
binary bodies runs that many asyncio clients sending one-row requests for ``--seconds`` each:
throughput, p50 / p99 latency, errors. The in-process reference (same runtime, same process as
the server would use) gives batched throughput at batch 64 and the batch-1 latency; the ratios
answer the targets (>= 70% of in-process batched throughput at 32 clients, <= 1 ms p50 server
overhead at 1 client). Client and server share the 2 cores, which the ratio includes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bodies(model: str, x: np.ndarray) -> dict[str, tuple[bytes, dict]]:
    head = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    bhead = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                         "parameters": {"binary_data_size": x.nbytes}}],
             "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    braw = json.dumps(bhead).encode()
    return {"json": (json.dumps(head).encode(), {"content-type": "application/json"}),
            "binary": (braw + x.astype("<f4").tobytes(), {"content-type": "application/octet-stream",
                                                          "Inference-Header-Content-Length": str(len(braw))})}


async def _client(host: str, port: int, request: bytes, stop: float, lat: list, errors: list) -> None:
    """One keep-alive HTTP/1.1 connection sending a pre-built request in a loop (a cheap client)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if head.startswith(b"HTTP/1.1 200"):
                lat.append(time.perf_counter() - t0)
            else:
                errors.append(head.split(b"\r\n", 1)[0])
    finally:
        writer.close()


async def load(host: str, port: int, path: str, body: bytes, headers: dict, clients: int, seconds: float) -> dict:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    request = head.encode() + body
    lat: list[float] = []
    errors: list = []
    t0 = time.perf_counter()
    stop = t0 + seconds
    await asyncio.gather(*[_client(host, port, request, stop, lat, errors) for _ in range(clients)])
    wall = time.perf_counter() - t0
    arr = np.array(lat) if lat else np.array([np.nan])
    return {"rows_per_s": len(lat) / wall, "p50_ms": 1000 * np.median(arr), "p99_ms": 1000 * np.percentile(arr, 99),
            "errors": len(errors), "requests": len(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--delay-ms", type=float, default=2.0, help="server --max-queue-delay-ms")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime threads in server and reference (default: the count student.onnx was "
                         "validated with; the server serves only in the validated mode)")
    args = ap.parse_args()

    import httpx

    from serving.runtime.onnx import OnnxRuntime

    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    shape = manifest["artifacts"]["student.onnx"]["onnx"]["inputs"][0]["shape"][1:]
    x1 = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    validation = json.loads((args.run_dir / "validation.json").read_text())
    validated = next((a.get("mode", {}).get("threads") for a in validation["artifacts"] if a["name"] == "student.onnx"),
                     None)
    threads = args.threads if args.threads is not None else validated
    rt = OnnxRuntime(args.run_dir / "student.onnx", threads=threads)
    x64 = np.repeat(x1, 64, 0)
    for _ in range(5):
        rt(x64)
    t_start, n = time.perf_counter(), 0
    while time.perf_counter() - t_start < 2.0:
        rt(x64)
        n += 64
    batched = n / (time.perf_counter() - t_start)
    one = []
    for _ in range(300):
        t0 = time.perf_counter()
        rt(x1)
        one.append(time.perf_counter() - t0)
    one_ms = 1000 * float(np.median(one))

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", str(args.run_dir), "--port", str(port),
                               "--max-queue-delay-ms", str(args.delay_ms),
                               *(["--threads", str(args.threads)] if args.threads is not None else [])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, reason = time.time() + 60, "no answer"
        while True:
            try:
                r = httpx.get(f"{url}/v2/health/ready")
                if r.status_code == 200:
                    break
                reason = r.json().get("error", r.text)
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise SystemExit(f"server did not become ready: {reason}")
            time.sleep(0.1)
        model = httpx.get(f"{url}/v2/models/{manifest['name']}").json()["name"]
        path = f"/v2/models/{model}/infer"
        rows = []
        for kind, (body, headers) in bodies(model, x1).items():
            asyncio.run(load("127.0.0.1", port, path, body, headers, 4, 1.0))  # warm-up
            for clients in (1, 8, 32, 64):
                r = asyncio.run(load("127.0.0.1", port, path, body, headers, clients, args.seconds))
                rows.append((kind, clients, r))
    finally:
        server.terminate()
        server.wait(30)
    print(f"in-process {manifest['artifacts']['student.onnx']['path']}: batched (64) {batched:.0f} rows/s; "
          f"batch-1 p50 {one_ms:.3f} ms")
    print("| body | clients | rows/s | % of in-process batched | p50 ms | p99 ms | p50 overhead ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, clients, r in rows:
        print(f"| {kind} | {clients} | {r['rows_per_s']:.0f} | {100 * r['rows_per_s'] / batched:.0f}% | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p50_ms'] - one_ms:.2f} | {r['errors']} |")
    print(f"\nreproduce: python bench/serve_load.py {args.run_dir} --seconds {args.seconds} --delay-ms {args.delay_ms}"
          + (f" --threads {args.threads}" if args.threads is not None else "") + f"  (ONNX Runtime threads: "
          f"{threads or 'default'})")


if __name__ == "__main__":
    main()
