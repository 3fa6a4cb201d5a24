"""Where ONNX Runtime's CPU time goes in a run's graphs: microseconds per op type per call (its own profiler).

    python -m bench.compress.op_profile runs/avdigits student.int8.minmax.onnx student.int8cpu.onnx --batch 64

Full graph optimisation (the mode ``fdkd serve`` runs: Q/DQ fused where ONNX Runtime can fuse them), the
machine's intra-op threads unless ``--threads``. Counting the op types shows which Q/DQ pairs were fused
into integer kernels (``QLinearConv``) and which were left around a float op (``DequantizeLinear`` + ``Conv``).
``--records docs/records/compress-real-ops.jsonl --student ARCH`` appends one record per graph (the real students'
section of docs/results/compress.md renders them).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path

import numpy as np


def profile(path: Path, batch: int, threads: int | None, calls: int) -> tuple[float, list[tuple[str, float, float]]]:
    """(microseconds per call over all nodes, [(op type, microseconds per call, nodes per call)], slowest first)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = f"/tmp/ort_op_profile_{os.getpid()}"
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal((batch, *inp.shape[1:])).astype(np.float32)
    for _ in range(calls):
        s.run(None, {inp.name: x})
    trace = Path(s.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    us, nodes = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            us[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    return sum(us.values()) / calls, [(k, v / calls, nodes[k] / calls) for k, v in us.most_common()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("graphs", nargs="+")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--records", type=Path, help="JSONL one record per graph is appended to")
    ap.add_argument("--student", default="", help="the student's arch, recorded")
    args = ap.parse_args(argv)
    from bench.common import append_records
    from fdkd.serving.runtime.cpu_isa import cpu_model, describe

    print(f"cpu: {describe()}; batch {args.batch}, threads {args.threads or 'default'}, {args.calls} calls")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    command = (f"python -m bench.compress.op_profile {args.run_dir} {' '.join(args.graphs)} --batch {args.batch} "
               f"--calls {args.calls}" + (f" --threads {args.threads}" if args.threads else ""))
    records = []
    for g in args.graphs:
        total, rows = profile(args.run_dir / g, args.batch, args.threads, args.calls)
        print(f"\n{g}: {total / 1000:.2f} ms per call in nodes")
        for op, us, n in rows:
            print(f"  {op:24s} {us / 1000:7.2f} ms  {n:3.0f} nodes")
        records.append({"started": started, "command": command, "cpu": cpu_model(), "load_avg_1m": os.getloadavg()[0],
                        "student": args.student, "graph": g, "batch": args.batch, "threads": args.threads,
                        "calls": args.calls, "total_ms": total / 1000,
                        "ops": [[op, us / 1000, n] for op, us, n in rows]})
    if args.records:
        append_records(args.records, records)
        print(f"\n{len(records)} records appended to {args.records}")


if __name__ == "__main__":
    main()
