"""Per-request cost of the inference routes inside one process: no sockets, no HTTP parsing.

    python -m bench.serve.asgi_cost runs/avdigits [--n 2000] [--profile out.html]

Drives the ASGI callables directly (scope, receive, send) one request at a time, for the bare
ASGI endpoint of ``bench/serve/bare_asgi.py``, fdkd's hot path, and fdkd through FastAPI
(``hot_path=False``), binary and JSON one-row bodies: microseconds per request (median of 5
rounds). ``--profile`` writes a pyinstrument profile of the fdkd hot path (binary) as HTML and
prints its text summary: where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _requests(name: str, x: np.ndarray) -> dict:
    from bench.serve.load import bodies

    out = {}
    for kind, (body, headers) in bodies(x).items():
        hdrs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        hdrs.append((b"content-length", str(len(body)).encode()))
        out[kind] = ({"type": "http", "method": "POST", "path": f"/v2/models/{name}/infer", "headers": hdrs,
                      "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
                      "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1)}, body)
    return out


async def _one(app, scope, body) -> int:
    sent = []

    async def receive():
        if not sent:
            sent.append(None)
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)

    status = []

    async def send(msg):
        if msg["type"] == "http.response.start":
            status.append(msg["status"])

    await app(dict(scope), receive, send)
    return status[0]


async def _measure(app, scope, body, n: int) -> float:
    assert await _one(app, scope, body) == 200
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            await _one(app, scope, body)
        rounds.append((time.perf_counter() - t0) / n)
    return 1e6 * float(np.median(rounds))


async def main_async(args) -> None:
    import logging

    from fdkd.serving.app import create_app
    from fdkd.serving.server import configure_logging
    from fdkd.serving.settings import ServeSettings

    configure_logging("info")
    logging.getLogger("fdkd").handlers[0].stream = open(os.devnull, "w")  # noqa: SIM115 (the format still runs)
    os.environ["FDKD_SERVE_RUN_DIR"] = str(args.run_dir)
    from bench.serve import bare_asgi

    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    x = np.random.default_rng(0).standard_normal((1, *bare_asgi.SHAPE[1:])).astype(np.float32)
    reqs = _requests(manifest.get("name", "student"), x)
    results = {}
    for kind, (scope, body) in reqs.items():
        results[("bare", kind)] = await _measure(bare_asgi.app, scope, body, args.n)
    for label, hot in (("fdkd hot path", True), ("fdkd via FastAPI", False)):
        app = create_app(ServeSettings(run_dir=args.run_dir, threads=1, hot_path=hot))
        async with app.router.lifespan_context(app):
            for kind, (scope, body) in reqs.items():
                results[(label, kind)] = await _measure(app, scope, body, args.n)
            if hot and args.profile:
                from pyinstrument import Profiler

                scope, body = reqs["binary"]
                prof = Profiler(interval=0.0001, async_mode="enabled")
                prof.start()
                for _ in range(args.n):
                    await _one(app, scope, body)
                prof.stop()
                Path(args.profile).write_text(prof.output_html())
                print(prof.output_text(unicode=False, color=False, show_all=False)[:6000])
    print("| route | binary us/request | json us/request |\n|---|---|---|")
    for label in ("bare", "fdkd hot path", "fdkd via FastAPI"):
        print(f"| {label} | {results[(label, 'binary')]:.0f} | {results[(label, 'json')]:.0f} |")
    from fdkd.serving.runtime.cpu_isa import describe

    print(f"\ncpu: {describe()}")
    print(f"reproduce: python -m bench.serve.asgi_cost {args.run_dir} --n {args.n}"
          + (f" --profile {args.profile}" if args.profile else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    args.run_dir = args.run_dir.resolve()
    try:
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
