"""fdkd serve against Triton Inference Server and the in-process runtime, in one run, on loopback.

    python -m bench.serve.load runs/avdigits                       # after `fdkd run`
    python -m bench.serve.load runs/avdigits --seconds 3 --servers fdkd,triton,bare --clients 1,32

Servers (each started as its own process on 127.0.0.1, one at a time, then stopped):

- ``fdkd``: ``fdkd serve`` (uvicorn + httptools + uvloop, the bare-ASGI hot path).
- ``fdkd-fastapi``: the same with ``FDKD_SERVE_HOT_PATH=0`` (the inference routes through FastAPI).
- ``fdkd-granian``: ``fdkd serve --http granian``: the same app under Granian (a Rust HTTP server),
  one worker (``serving/granian_server.py``); ``fdkd-granian-2w``: two worker processes.
- ``fdkd-2proc``: the same app under uvicorn with 2 worker processes sharing the port
  (``fdkd-uvicorn``: 1 worker, i.e. ``fdkd serve`` without the CLI process around it).
- ``triton``: Triton's ``tritonserver`` (from the ``nvidia-pytriton`` wheel, in its own virtualenv
  made from the system's python3.11, created on first use: ``--triton-venv``) with its dynamic
  batcher, calling the same ONNX Runtime session settings (1 intra-op thread) from Python.
- ``bare``: a bare ASGI endpoint under the same uvicorn (``bench/serve/bare_asgi.py``): reads the body,
  decodes the tensor, runs the runtime inline, and replies with a body of the same size as
  fdkd's: the floor that the one-client p50 target compares against.

All servers are started first; then, in ``--rounds`` interleaved rounds (the load of a shared
machine drifts, so every server sees every phase of it), for each body (``binary``: the binary
tensor extension both ways; ``json``), client count and server, that many keep-alive HTTP/1.1
connections (asyncio + uvloop, in this process) send one-row FP32 requests for ``--seconds``:
rows/s, p50 and p99 latency, errors. The table shows the median over rounds. The in-process
reference (same runtime in this process) gives batched throughput at batch 64 and the batch-1
latency; its batched throughput is measured again at the start of every round (while the servers
idle), so that each round's share of it is taken under that round's load. Every row goes to
``--out`` (jsonl, with a run id, CPU model, flags and the command); ``bench/serve/results.py``
turns the latest run into the tables of docs/results/serve-load.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRITON_VENV = ROOT / ".bench-venv-triton"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_info() -> dict:
    from fdkd.serving.runtime.cpu_isa import cpu_model, simd_flags

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "simd_flags": " ".join(simd_flags())}


def bodies(x: np.ndarray) -> dict[str, tuple[bytes, dict]]:
    head = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    bhead = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                         "parameters": {"binary_data_size": x.nbytes}}],
             "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    braw = json.dumps(bhead, separators=(",", ":")).encode()
    return {"binary": (braw + x.astype("<f4").tobytes(), {"Content-Type": "application/octet-stream",
                                                          "Inference-Header-Content-Length": str(len(braw))}),
            "json": (json.dumps(head, separators=(",", ":")).encode(), {"Content-Type": "application/json"})}


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


async def _load(port: int, path: str, body: bytes, headers: dict, clients: int, seconds: float) -> dict:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    request = head.encode() + body
    lat: list[float] = []
    errors: list = []
    t0 = time.perf_counter()
    await asyncio.gather(*[_client("127.0.0.1", port, request, t0 + seconds, lat, errors) for _ in range(clients)])
    wall = time.perf_counter() - t0
    arr = np.array(lat) if lat else np.array([np.nan])
    return {"rows_per_s": len(lat) / wall, "p50_ms": float(1000 * np.median(arr)),
            "p99_ms": float(1000 * np.percentile(arr, 99)), "errors": len(errors), "requests": len(lat)}


def load(*args) -> dict:
    try:
        import uvloop

        return uvloop.run(_load(*args))
    except ImportError:
        return asyncio.run(_load(*args))


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline, reason = time.time() + timeout, "no answer"
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: server exited with {proc.returncode}")
        try:
            r = httpx.get(f"{url}/v2/health/ready", timeout=2)
            if r.status_code == 200:
                return
            reason = r.json().get("error", r.text)
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}: server did not become ready: {reason}")


def triton_python(venv: Path) -> Path:
    """The Triton virtualenv's interpreter; made from the system's python3.11 on first use."""
    py = venv / "bin" / "python"
    if not py.exists():
        system = Path("/usr/bin/python3.11")
        if not system.exists():
            raise SystemExit("Triton needs the system's python3.11 (/usr/bin/python3.11): PyTriton's stub links it")
        subprocess.run([str(system), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "nvidia-pytriton", "onnxruntime", "numpy"], check=True)
    return py


def start(server: str, args, env_extra: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FDKD_SERVE_RUN_DIR": str(args.run_dir),
           "FDKD_SERVE_MAX_QUEUE_DELAY_MS": str(args.delay_ms), **env_extra}
    env["FDKD_BENCH_THREADS"] = str(args.ort_threads or 0)  # bare_asgi's runtime (0: ORT's default)
    if args.threads is not None:  # fdkd serves only in the validated mode: by default it takes that count itself
        env.update(OMP_NUM_THREADS=str(args.threads), FDKD_SERVE_THREADS=str(args.threads))
    py = sys.executable
    if server in ("fdkd", "fdkd-fastapi"):
        if server == "fdkd-fastapi":
            env["FDKD_SERVE_HOT_PATH"] = "0"
        cmd = [py, "-m", "fdkd", "serve", str(args.run_dir), "--port", str(port)]
    elif server in ("fdkd-granian", "fdkd-granian-2w"):
        cmd = [py, "-m", "fdkd", "serve", str(args.run_dir), "--port", str(port), "--http", "granian",
               "--workers", "2" if server.endswith("2w") else "1"]
    elif server in ("fdkd-2proc", "fdkd-uvicorn"):
        workers = "2" if server == "fdkd-2proc" else "1"
        cmd = [py, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--workers", workers,
               "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
               "fdkd.serving.asgi:app"]
    elif server == "bare":
        cmd = [py, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
               "--http", "httptools", "--no-access-log", "--log-level", "warning", "bench.serve.bare_asgi:app"]
    elif server == "triton":
        cmd = [str(triton_python(args.triton_venv)), "-m", "bench.serve.triton", str(args.run_dir),
               "--http-port", str(port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
               "--delay-us", str(int(args.delay_ms * 1000)), "--threads", str(args.ort_threads or 0)]
    else:
        raise SystemExit(f"unknown server {server!r}")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_ready(f"http://127.0.0.1:{port}", proc)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    with __import__("contextlib").suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    time.sleep(0.5)  # children (tritonserver, workers) of the group


def validated_threads(run_dir: Path) -> int | None:
    """The ONNX Runtime thread count student.onnx was validated with (None: ORT's default)."""
    validation = json.loads((run_dir / "validation.json").read_text())
    return next((a.get("mode", {}).get("threads") for a in validation["artifacts"] if a["name"] == "student.onnx"),
                None)


def in_process(run_dir: Path, threads: int | None, b1: bool = True) -> dict:
    from fdkd.serving.runtime.onnx import OnnxRuntime

    rt = OnnxRuntime(run_dir / "student.onnx", threads=threads)
    x1 = np.random.default_rng(0).standard_normal((1, *rt.input_shape[1:])).astype(np.float32)
    x64 = np.repeat(x1, 64, 0)
    for _ in range(5):
        rt(x64)
    t_start, n = time.perf_counter(), 0
    while time.perf_counter() - t_start < 2.0:
        rt(x64)
        n += 64
    batched = n / (time.perf_counter() - t_start)
    if not b1:
        return {"batched_rows_per_s": batched}
    one = []
    for _ in range(500):
        t0 = time.perf_counter()
        rt(x1)
        one.append(time.perf_counter() - t0)
    return {"batched_rows_per_s": batched, "b1_p50_ms": 1000 * float(np.median(one))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="max queue delay of fdkd's and Triton's batchers")
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime intra-op threads in every server and in-process (default: the count "
                         "student.onnx was validated with; fdkd serves only in a validated mode)")
    ap.add_argument("--clients", default="1,32")
    ap.add_argument("--servers", default="fdkd,triton,bare,fdkd-fastapi,fdkd-granian,fdkd-2proc")
    ap.add_argument("--bodies", default="binary,json")
    ap.add_argument("--triton-venv", type=Path, default=DEFAULT_TRITON_VENV)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "records" / "serve-load.jsonl")
    ap.add_argument("--note", default="", help="free text stored with every record (e.g. the machine's load)")
    args = ap.parse_args()
    args.run_dir = args.run_dir.resolve()
    args.ort_threads = args.threads if args.threads is not None else validated_threads(args.run_dir)
    clients = [int(c) for c in args.clients.split(",")]
    servers = args.servers.split(",")
    kinds = args.bodies.split(",")
    cmd = "python -m bench.serve.load " + " ".join(sys.argv[1:])
    run = {"run_id": uuid.uuid4().hex[:12], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": cmd, "seconds": args.seconds, "rounds": args.rounds, "delay_ms": args.delay_ms,
           "threads": args.ort_threads, "note": args.note, **cpu_info()}
    try:
        load_avg = os.getloadavg()[0]
    except OSError:
        load_avg = None
    run["load_avg_1m"] = load_avg

    ref = in_process(args.run_dir, args.ort_threads)
    records = [{**run, "server": "in-process", **ref}]
    print(f"in-process student.onnx: batched (64) {ref['batched_rows_per_s']:.0f} rows/s; "
          f"batch-1 p50 {ref['b1_p50_ms']:.3f} ms", flush=True)
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    shape = manifest["artifacts"]["student.onnx"]["onnx"]["inputs"][0]["shape"][1:]
    x1 = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    path = f"/v2/models/{manifest.get('name', 'student')}/infer"
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for server in servers:  # all up at once (idle meanwhile), so that rounds can interleave them
            procs[server] = start(server, args, {})
            for kind in kinds:
                body, headers = bodies(x1)[kind]
                load(procs[server][1], path, body, headers, 4, 1.0)  # warm-up
        for rnd in range(args.rounds):  # the machine's load drifts: every server sees every phase of it
            again = in_process(args.run_dir, args.ort_threads, b1=False)  # this round's reference, same load
            records.append({**run, "server": "in-process", "round": rnd, **again})
            print(f"round {rnd} in-process    batched (64) {again['batched_rows_per_s']:7.0f} rows/s", flush=True)
            for kind in kinds:
                body, headers = bodies(x1)[kind]
                for c in clients:
                    for server in servers:
                        r = load(procs[server][1], path, body, headers, c, args.seconds)
                        rec = {**run, "server": server, "body": kind, "clients": c, "round": rnd, **r}
                        records.append(rec)
                        print(f"round {rnd} {server:13s} {kind:6s} {c:3d} clients: {r['rows_per_s']:7.0f} rows/s  "
                              f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  errors {r['errors']}",
                              flush=True)
    finally:
        for proc, _ in procs.values():
            stop(proc)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    print(f"\n{len(records)} records appended to {args.out} (run {run['run_id']})")
    print(f"CPU: {run['cpu']}, {run['cores']} cores; SIMD flags: {run['simd_flags']}")
    print(subprocess.run([sys.executable, "-m", "bench.serve.results", str(args.out), "--run", run["run_id"]],
                         cwd=ROOT, capture_output=True, text=True).stdout)
    print(f"reproduce: {cmd}")


if __name__ == "__main__":
    main()
