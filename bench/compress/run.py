"""CPU inference benchmark of one run directory's artifacts, all measured in one process.

    python -m bench.compress.run runs/avdigits                    # after `fdkd run`; appends to the records
    python -m bench.compress.run runs/avdigits --repeats 200 --batches 1 8 64
    python -m bench.compress.results --results docs/results/compress.md   # its tables from the records

torch eager FP32 vs ONNX Runtime FP32, the FP16 graph, each TensorRT-legal INT8 Q/DQ graph (S8S8,
symmetric) as ONNX Runtime's CPU kernels run it (Q/DQ fused) and as written (Q/DQ emulated: the
graph's reference semantics, which TensorRT approximates with its own fused INT8 kernels), and the
CPU INT8 variant ``student.int8cpu.onnx`` (U8S8, reduced range), at batch 1, 8 and 64. A graph the INT8 gate
search made (``student.int8.search.onnx``, or a searched ``student.int8cpu.onnx``, named by its metadata) is
labelled ``[gate-searched: ...]`` and, for the CPU graph, timed beside the plain one the bench quantizes again:
throughput,
p50/p99 latency, test accuracy. Then the model's FLOPs against a measured FP32 matmul ceiling of
this machine, the CPU model and SIMD flags, its INT8 kernel family (``fdkd.serving.runtime.cpu_isa``:
fused INT8 results differ between families), which graph ``fdkd serve`` picks here, and the
command that reproduces it. One JSON record per (artifact, batch) goes to ``--records``
(``docs/records/compress.jsonl``), which ``bench/compress/results.py`` renders.

The candidates are timed round-robin (every artifact at one batch, then the next batch) so that a
shared machine's slow minute lands on all of them rather than on one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.common import append_records

RECORDS = Path(__file__).resolve().parents[2] / "docs" / "records" / "compress.jsonl"


def timings(fn, x: np.ndarray, repeats: int) -> np.ndarray:
    for _ in range(3):
        fn(x)
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        out[i] = time.perf_counter() - t0
    return out


def conv_flops(model, x) -> int:
    """Multiply-adds x 2 of every Conv2d and Linear for one sample."""
    import torch

    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += 2 * out[0].numel() * k
        elif isinstance(mod, torch.nn.Linear):
            total += 2 * mod.in_features * mod.out_features

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        model(torch.from_numpy(x[:1]))
    for h in handles:
        h.remove()
    return total


def matmul_ceiling() -> float:
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t = timings(lambda _: a @ b, None, 20)
    return 2 * 1024**3 / np.median(t) / 1e9


def searched_as(path: Path) -> str:
    """`` [gate-searched: entropy, 2 layers in float]`` for a graph the INT8 gate search made, else ``""``."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if "fdkd.search.float_layers" not in meta:
        return ""
    floats = [x for x in meta["fdkd.search.float_layers"].split(",") if x]
    cal = meta.get("fdkd.calibration", "?") + (f" {meta['fdkd.search.percentile']}" if "fdkd.search.percentile"
                                               in meta else "")
    return f" [gate-searched: {cal}, {len(floats)} layer(s) in float]"


def plain_cpu_graph(run_dir: Path, out: Path) -> Path | None:
    """The plain CPU INT8 graph (the build's calibrator, nothing searched) written to ``out`` when the run's
    ``student.int8cpu.onnx`` is a gate-searched one, so the table shows both; None when the run's is the plain one."""
    if not searched_as(run_dir / "student.int8cpu.onnx"):
        return None
    from fdkd.calibration.quantize import quantize_int8
    from fdkd.pipeline.export import INPUT_NAME

    cfg = json.loads((run_dir / "manifest.json").read_text())["config"]
    q = cfg["quantize"]
    quantize_int8(run_dir / "student.onnx", out, run_dir / "calib.npz", INPUT_NAME, cfg["build"]["int8_method"],
                  exclude=tuple(q["exclude"]), percentile=q["percentile"], target="cpu")
    return out


def candidate_graphs(run_dir: Path, extra_dir: Path | None = None) -> list[tuple[str, Path, dict]]:
    """(label, path, OnnxRuntime options) of every ONNX graph of ``run_dir`` this bench times, in table order; a
    gate-searched graph is labelled so and, for the CPU graph, timed beside the plain one (made in ``extra_dir``)."""
    out = []
    for name, kind in [("student.onnx", "FP32"), ("student.fp16.onnx", "FP16 graph")]:
        if (run_dir / name).exists():
            out.append((f"ORT {name} ({kind})", run_dir / name, {}))
    for p in sorted(run_dir.glob("student.int8.*.onnx")):
        tag = searched_as(p)
        out.append((f"ORT {p.name} (S8S8, Q/DQ fused: CPU kernels){tag}", p, {}))
        out.append((f"ORT {p.name} (S8S8, Q/DQ emulated: as written){tag}", p, {"emulate_qdq": True}))
    cpu = run_dir / "student.int8cpu.onnx"
    if cpu.exists():
        plain = plain_cpu_graph(run_dir, extra_dir / "student.int8cpu.plain.onnx") if extra_dir else None
        if plain is not None:
            out.append(("ORT student.int8cpu.onnx as quantized before the search (U8S8 reduced range, Q/DQ fused) "
                        "[plain]", plain, {}))
        out.append((f"ORT student.int8cpu.onnx (U8S8 reduced range, Q/DQ fused){searched_as(cpu)}", cpu, {}))
    return out


def served_here(run_dir: Path) -> dict:
    """What ``fdkd serve RUN_DIR`` (artifact auto, no GPU engines) would load on this machine, and why."""
    from fdkd.serving.model import NotServable, load_model

    try:
        m = load_model(run_dir)
    except NotServable as e:
        return {"artifact": None, "reason": str(e)}
    return {"artifact": m.artifact, "mode": m.mode}


def host() -> dict:
    import onnxruntime
    import torch

    from fdkd.serving.runtime.cpu_isa import cpu_model, int8_kernels, simd_flags

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": cpu_model(), "simd_flags": " ".join(simd_flags()), "int8_kernels": int8_kernels(),
            "cores": os.cpu_count(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "load_avg_1m": load}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--repeats", type=int, default=100, help="timed calls at batch 1 (fewer at larger batches)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--records", type=Path, default=RECORDS, help="JSONL the records are appended to")
    ap.add_argument("--no-records", action="store_true", help="print only")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)

    import torch

    from fdkd.pipeline.data.dataset import load_dataset
    from fdkd.pipeline.models.checkpoint import load_model
    from fdkd.serving.runtime.onnx import OnnxRuntime

    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    ds = load_dataset(Path(manifest["artifacts"]["dataset"]["path"]))
    x, y = ds.take(manifest["student_modality"], "test")
    student, _ = load_model(args.run_dir / "student.pt")
    student.eval()
    threads = torch.get_num_threads()

    def eager(b):
        with torch.no_grad():
            return student(torch.from_numpy(b)).numpy()

    candidates = [("torch eager fp32", "student.pt", eager, {"runtime": "pytorch", "threads": threads})]
    tmp = tempfile.TemporaryDirectory()  # the plain CPU graph, when the run's is a gate-searched one
    for label, path, opts in candidate_graphs(args.run_dir, Path(tmp.name)):
        rt = OnnxRuntime(path, threads=threads, **opts)
        name = path.name if path.parent == args.run_dir else f"{path.name} (made by the bench)"
        candidates.append((label, name, rt, rt.mode()))
    acc = {label: float((np.concatenate([fn(x[i : i + 64]) for i in range(0, len(x), 64)]).argmax(1) == y).mean())
           for label, _, fn, _ in candidates}
    timed: dict[tuple[str, int], np.ndarray] = {}
    for batch in args.batches:
        xb = np.resize(x, (batch, *x.shape[1:])).astype(np.float32)
        reps = max(20, args.repeats * 8 // (8 + batch))  # 100 at batch 1 -> 88, 50, 20: ~equal time per row
        for label, _, fn, _ in candidates:
            timed[label, batch] = timings(fn, xb, reps)
    flops = conv_flops(student, x)
    ceiling = matmul_ceiling()
    served = served_here(args.run_dir)
    command = (f"python -m bench.compress.run {args.run_dir} --repeats {args.repeats} --batches "
               + " ".join(map(str, args.batches)))
    run = {"run_id": uuid.uuid4().hex[:12], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": command, "note": args.note, **host(), "threads": threads, "test_rows": int(len(y)),
           "mflop_per_sample": flops / 1e6, "matmul_gflops": ceiling, "served": served}
    records = []
    eager_acc = acc["torch eager fp32"]
    for label, name, _, mode in candidates:
        for batch in args.batches:
            t = timed[label, batch]
            base = timed["torch eager fp32", batch]
            records.append(run | {"artifact": label, "file": name, "mode": mode, "batch": batch,
                                  "accuracy": acc[label], "acc_delta_pt": 100 * (acc[label] - eager_acc),
                                  "repeats": len(t), "rows_per_s": batch / float(np.median(t)),
                                  "p50_ms": 1000 * float(np.median(t)), "p99_ms": 1000 * float(np.percentile(t, 99)),
                                  "x_eager": float(np.median(base) / np.median(t))})
    from bench.compress.results import isa_summary, render_run

    print(f"cpu: {run['cpu']}; {isa_summary(run['simd_flags'])}; INT8 kernel family {run['int8_kernels']}\n")
    print(render_run(records))
    print(f"\nreproduce: {command}")
    if not args.no_records:
        append_records(args.records, records)
        print(f"\n{len(records)} records appended to {args.records} (run {run['run_id']})")


if __name__ == "__main__":
    main()
