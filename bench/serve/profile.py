"""A py-spy profile of ``fdkd serve`` under load: where the server's time goes.

    python -m bench.serve.profile runs/avdigits binary docs/records/profiles/fdkd-binary-32clients.pyspy.txt
    python -m bench.serve.profile_summary docs/records/profiles/fdkd-binary-32clients.pyspy.txt

Starts ``fdkd serve`` (as ``bench/serve/load.py`` does), warms it up, then records it with
``py-spy record -r 200 --threads -f raw`` for 5 s while 32 clients send one-row requests of the
given body (``binary`` or ``json``). py-spy must be allowed to trace the process (ptrace).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.serve import load as sl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("body", choices=["binary", "json"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None,
                    help="ONNX Runtime threads of the server (as serve_load; default: the validated count)")
    args = ap.parse_args()
    args.run_dir = args.run_dir.resolve()
    args.delay_ms, args.triton_venv = 0.0, sl.DEFAULT_TRITON_VENV
    args.ort_threads = args.threads if args.threads is not None else sl.validated_threads(args.run_dir)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    dims = manifest["artifacts"]["student.onnx"]["onnx"]["inputs"][0]["shape"][1:]
    x1 = np.random.default_rng(0).standard_normal((1, *dims)).astype(np.float32)
    path = f"/v2/models/{manifest.get('name', 'student')}/infer"
    proc, port = sl.start("fdkd", args, {})
    try:
        body, headers = sl.bodies(x1)[args.body]
        sl.load(port, path, body, headers, 4, 0.5)
        rec = subprocess.Popen([spy, "record", "-p", str(proc.pid), "-d", str(int(args.seconds)), "-r", "200",
                                "-f", "raw", "-o", str(args.out), "--threads", "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        r = sl.load(port, path, body, headers, args.clients, args.seconds + 0.5)
        rec.communicate()
        print(f"{args.body} x{args.clients}: {r['rows_per_s']:.0f} rows/s, p50 {r['p50_ms']:.2f} ms, "
              f"p99 {r['p99_ms']:.2f} ms (under py-spy); profile in {args.out}")
    finally:
        sl.stop(proc)


if __name__ == "__main__":
    main()
