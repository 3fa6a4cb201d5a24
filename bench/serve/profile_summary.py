"""Where a server's time goes: a py-spy raw profile (``py-spy record -f raw --threads``) by category.

    python -m bench.serve.profile_summary docs/records/profiles/fdkd-json-32clients.pyspy.txt

Each sample is charged to the first category (in the order of ``CATEGORIES``) that one of its
frames matches, innermost frame first; the rest is "other". Shares are of all non-idle samples
of the process (both threads: the event loop's and the runtime worker's).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _wait_line() -> int:
    """The line of serving/batcher.py where the runtime thread waits for its next batch (it moves with edits)."""
    src = (Path(__file__).resolve().parents[2] / "serving" / "batcher.py").read_text().splitlines()
    return next(i for i, line in enumerate(src, 1) if "self._jobs.get()" in line)


# the innermost frame of a thread that waits (py-spy cannot tell these waits from work)
IDLE = [("runtime worker thread waiting for a batch (idle)",
         ("_worker (concurrent/futures/thread.py:81)", f"_RuntimeThread._work (serving/batcher.py:{_wait_line()})")),
        ("event loop in uvloop's C code (socket I/O, callbacks, and waiting in epoll)", ("Runner.run",))]
# (category, substrings of a frame "function (file:line)"), checked innermost frame first
CATEGORIES = [
    ("ONNX Runtime (worker thread)", ("Session.run",)),
    ("JSON tensor decode (msgspec + numpy)", ("_json_tensor",)),
    ("V2 request decode (one msgspec pass, numbers included), float32 conversion, checks",
     ("parse_infer", "_parse_outputs", "_check_shape", "_check_id", "_checked", "_parse_head")),
    ("reply building (orjson)", ("build_response",)),
    ("batcher and thread hand-off", ("DynamicBatcher", "_RuntimeThread", "asyncio/timeouts.py",
                                    "asyncio/tasks.py", "ThreadPoolExecutor", "_chain_future", "Future.set_result",
                                    "_WorkItem", "_worker", "Inference._rows")),
    ("metrics and logging", ("prometheus", "Inference._count", "_log_batch", "logging/", "Logger.")),
    ("hot path handler (ASGI glue)", ("HotPath.", "Inference.", "receive_gone")),
    ("pure-ASGI middleware (log, key, body cap)", ("RequestLog.", "ApiKey.", "BodyLimit.", "FdkdApp.")),
    ("uvicorn HTTP protocol (Python; fdkd.serving.http_guard's subclass included)", ("uvicorn/", "http_guard")),
]


def summarize(path: Path) -> list[tuple[str, float]]:
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")[::-1]
        total += int(n)
        cat = next((c for c, keys in IDLE if any(k in frames[0] for k in keys)), "other")
        for frame in frames if cat == "other" else ():
            hit = next((c for c, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if hit:
                cat = hit
                break
        counts[cat] = counts.get(cat, 0) + int(n)
    return sorted(((c, n / total) for c, n in counts.items()), key=lambda t: -t[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profiles", type=Path, nargs="+")
    args = ap.parse_args()
    for p in args.profiles:
        print(f"\n{p.name}\n\n| where | share of samples |\n|---|---|")
        for cat, share in summarize(p):
            print(f"| {cat} | {100 * share:.1f} % |")


if __name__ == "__main__":
    main()
