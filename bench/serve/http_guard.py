"""Per-request cost of the guarded HTTP protocol (``fdkd.serving.http_guard``) against uvicorn's plain httptools.

    python -m bench.serve.http_guard                  # 3 s per protocol and body size, twice, interleaved
    python -m bench.serve.http_guard --seconds 1

A bare ASGI app (reads the body, answers 2 bytes) runs under uvicorn in a subprocess on
127.0.0.1 with each protocol in turn; one blocking keep-alive client sends the same request in a
loop. Prints p50 / p99 latency and requests/s per protocol and body size, the difference of the
p50s, the CPU model and flags. Client and server share the machine's cores.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROTOCOLS = ("httptools", "guarded")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def serve(protocol: str, port: int) -> None:
    import uvicorn

    from fdkd.serving.http_guard import guarded_protocol

    http = guarded_protocol(10.0, 32 << 10) if protocol == "guarded" else "httptools"
    uvicorn.run(app, host="127.0.0.1", port=port, http=http, log_level="error", access_log=False, lifespan="off")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(protocol: str, body: int, seconds: float) -> np.ndarray:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.serve.http_guard", "--serve", protocol, str(port)],
                            cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.time() + 20
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.05)
        request = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                   + f"Content-Length: {body}\r\n\r\n".encode() + b"\0" * body)
        lat, stop = [], time.perf_counter() + seconds
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            s.sendall(request)
            got = b""
            while not got.endswith(b"\r\n\r\nok"):
                got += s.recv(65536)
            lat.append(time.perf_counter() - t0)
        s.close()
        return np.array(lat[10:])  # first requests warm the connection
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--serve", nargs=2, metavar=("PROTOCOL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve[0], int(args.serve[1]))
    rows = []
    for body in (0, 16 << 10):
        lat = {p: [] for p in PROTOCOLS}
        for _ in range(2):  # interleaved, so drift on a shared machine hits both
            for p in PROTOCOLS:
                lat[p].append(measure(p, body, args.seconds / 2))
        stats = {p: np.concatenate(v) for p, v in lat.items()}
        for p in PROTOCOLS:
            v = stats[p]
            rows.append((p, body, len(v) / (args.seconds), 1e6 * np.percentile(v, 50), 1e6 * np.percentile(v, 99)))
        rows.append(("guarded - httptools", body, None, 1e6 * (np.median(stats["guarded"]) -
                                                                np.median(stats["httptools"])), None))
    print("| protocol | body bytes | req/s | p50 us | p99 us |\n|---|---|---|---|---|")
    for p, body, rps, p50, p99 in rows:
        print(f"| {p} | {body} | {'' if rps is None else f'{rps:,.0f}'} | {p50:.1f} | "
              f"{'' if p99 is None else f'{p99:.1f}'} |")
    from fdkd.serving.runtime.cpu_isa import describe

    print(f"\ncpu: {describe()}\ncommand: python -m bench.serve.http_guard --seconds {args.seconds:g}")


if __name__ == "__main__":
    main()
