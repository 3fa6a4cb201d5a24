"""CPU inference benchmark of one run directory's artifacts, all measured in one process.

    python bench/compress.py runs/avdigits            # after `fdkd run`
    python bench/compress.py runs/avdigits --repeats 200

torch eager FP32 vs ONNX Runtime FP32, FP16, INT8 Q/DQ per calibration method (as ONNX Runtime's
CPU kernels run them, and with Q/DQ emulated: the graph's reference semantics, which TensorRT
approximates with its own fused INT8 kernels) and the CPU INT8
variant, at batch 1 and 64: throughput, p50/p99 latency, test accuracy. Then the model's FLOPs
against a measured FP32 matmul ceiling of this machine, to say how far from the hardware each is.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--repeats", type=int, default=100)
    args = ap.parse_args()

    import torch

    from pipeline.data.dataset import load_dataset
    from pipeline.models.checkpoint import load_model
    from serving.runtime.onnx import OnnxRuntime

    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    ds = load_dataset(Path(manifest["artifacts"]["dataset"]["path"]))
    x, y = ds.take(manifest["student_modality"], "test")
    student, _ = load_model(args.run_dir / "student.pt")
    threads = torch.get_num_threads()

    def eager(b):
        with torch.no_grad():
            return student(torch.from_numpy(b)).numpy()

    candidates = [("torch eager fp32", eager)]
    for name, opts in [("student.onnx", {}), ("student.fp16.onnx", {})] + [
        (p.name, o) for p in sorted(args.run_dir.glob("student.int8.*.onnx")) for o in ({}, {"emulate_qdq": True})
    ] + [("student.int8cpu.onnx", {})]:
        if (args.run_dir / name).exists():
            label = f"ort {name}" + (" (Q/DQ emulated)" if opts else "")
            candidates.append((label, OnnxRuntime(args.run_dir / name, threads=threads, **opts)))
    rows = []
    for label, fn in candidates:
        acc = float((np.concatenate([fn(x[i : i + 64]) for i in range(0, len(x), 64)]).argmax(1) == y).mean())
        row = {"artifact": label, "accuracy": acc}
        for batch in (1, 64):
            xb = np.resize(x, (batch, *x.shape[1:])).astype(np.float32)
            t = timings(fn, xb, args.repeats if batch == 1 else max(20, args.repeats // 4))
            row[f"b{batch}"] = {"rows_per_s": batch / np.median(t), "p50_ms": 1000 * np.median(t),
                                "p99_ms": 1000 * np.percentile(t, 99)}
        rows.append(row)
    base = rows[0]
    flops = conv_flops(student, x)
    ceiling = matmul_ceiling()
    print("| artifact | test acc % | b1 rows/s | b1 p50 ms | b1 p99 ms | b64 rows/s | b64 p50 ms | b64 p99 ms "
          "| b64 x eager | b64 GFLOP/s |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b1, b64 = r["b1"], r["b64"]
        print(f"| {r['artifact']} | {100 * r['accuracy']:.1f} | {b1['rows_per_s']:.0f} | {b1['p50_ms']:.3f} | "
              f"{b1['p99_ms']:.3f} | {b64['rows_per_s']:.0f} | {b64['p50_ms']:.2f} | {b64['p99_ms']:.2f} | "
              f"{b64['rows_per_s'] / base['b64']['rows_per_s']:.2f} | {b64['rows_per_s'] * flops / 1e9:.1f} |")
    print(f"\nmodel: {flops / 1e6:.1f} MFLOP per sample; FP32 matmul ceiling of this machine "
          f"(torch 1024^3, {threads} threads): {ceiling:.0f} GFLOP/s")
    from host_cpu import describe

    print(f"cpu: {describe()}")
    print(f"reproduce: python bench/compress.py {args.run_dir} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
