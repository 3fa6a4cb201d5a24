"""Which quantization settings make ONNX Runtime's CPU INT8 graph fast: variants of ``student.int8cpu.onnx`` timed in
one process against torch eager and ONNX Runtime FP32, with how many convolutions each fuses.

    python -m bench.compress.cpu_variants runs/avdigits --batch 64 --repeats 30

Every variant is quantized from the run's ``student.onnx`` with its ``calib.npz`` and the build's calibrator, then run
with full graph optimisation (as ``fdkd serve`` runs it) on the test split: accuracy against torch eager, the
convolutions ONNX Runtime fused into ``QLinearConv`` (from its optimised graph), and the median time per batch,
timed round-robin so that a shared machine's slow second lands on every variant. One JSON record per variant goes to
``--records`` (``docs/records/compress-cpu-variants.jsonl``); the table printed is the only rendering.

The variants (``VARIANTS``): the shipped one (U8 asymmetric activations, S8 per-channel weights in reduced range,
QDQ), the same without reduced range (a VNNI machine does not saturate), per-tensor weights, activations kept through
``Relu`` (``QDQKeepRemovableActivations``), and the QOperator format (``QLinearConv`` written by the quantizer).
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

RECORDS = Path(__file__).resolve().parents[2] / "docs" / "records" / "compress-cpu-variants.jsonl"
# name -> (quantize_static keyword arguments over the shipped ones, extra_options over the shipped ones)
VARIANTS = {
    "shipped (U8S8, per-channel, reduced range, QDQ)": ({}, {}),
    "no reduced range": ({"reduce_range": False}, {}),
    "per-tensor weights": ({"per_channel": False}, {}),
    "QDQKeepRemovableActivations": ({}, {"QDQKeepRemovableActivations": True}),
    "QOperator format": ({"quant_format": "QOperator"}, {}),
}


def quantize_variant(fp32: Path, out: Path, calib, method: str, kw: dict, extra: dict) -> None:
    """``calib``: the run's ``CalibrationRows`` (``bench.compress.run.run_calibration``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fdkd.calibration.quantize import CALIBRATION_METHODS

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    args = {"quant_format": QuantFormat.QDQ, "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
            "per_channel": True, "reduce_range": True,
            "calibrate_method": getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
            "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": False} | extra}
    args |= {k: (getattr(QuantFormat, v) if k == "quant_format" else v) for k, v in kw.items()}
    quantize_static(str(pre), str(out), calib.reader(), **args)


def session(path: Path, threads: int, optimized: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def fused_convs(optimized: Path) -> tuple[int, int]:
    """(QLinearConv nodes, float Conv nodes) of ONNX Runtime's optimised graph."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    return ops.count("QLinearConv"), sum(o in ("Conv", "FusedConv") or o.startswith("Nchwc") and "Conv" in o
                                         for o in ops)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds (every candidate once per round)")
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("--no-records", action="store_true")
    ap.add_argument("--threads", type=int, help="torch and ONNX Runtime intra-op threads (default: torch's)")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from bench.compress.run import host, run_calibration
    from fdkd.pipeline.data.dataset import load_dataset
    from fdkd.pipeline.models.checkpoint import load_model

    rd = args.run_dir
    manifest = json.loads((rd / "manifest.json").read_text())
    method = manifest["config"]["build"]["int8_method"]
    ds = load_dataset(Path(manifest["artifacts"]["dataset"]["path"]))
    x, y = ds.take(manifest["student_modality"], "test")
    student, _ = load_model(rd / "student.pt")
    student.eval()
    threads = torch.get_num_threads()

    def eager(b):
        with torch.no_grad():
            return student(torch.from_numpy(b)).numpy()

    calib = run_calibration(rd)
    tmp = Path(tempfile.mkdtemp(dir=rd))
    cands = {"torch eager fp32": (eager, None), "ORT student.onnx (FP32)": (None, rd / "student.onnx")}
    for name, (kw, extra) in VARIANTS.items():
        out = tmp / f"v{len(cands)}.onnx"
        quantize_variant(rd / "student.onnx", out, calib, method, kw, extra)
        cands[f"INT8 CPU: {name}"] = (None, out)
    fns, fused = {}, {}
    for label, (fn, path) in cands.items():
        if path is None:
            fns[label] = fn
            continue
        opt = path.with_suffix(".opt.onnx")
        s = session(path, threads, opt)
        name = s.get_inputs()[0].name
        fns[label] = lambda b, s=s, name=name: s.run(None, {name: b})[0]
        fused[label] = fused_convs(opt)
    acc = {k: float((np.concatenate([f(x[i : i + 64]) for i in range(0, len(x), 64)]).argmax(1) == y).mean())
           for k, f in fns.items()}
    xb = np.resize(x, (args.batch, *x.shape[1:])).astype(np.float32)
    for f in fns.values():
        for _ in range(3):
            f(xb)
    times = {k: [] for k in fns}
    for _ in range(args.repeats):  # round-robin
        for k, f in fns.items():
            t0 = time.perf_counter()
            f(xb)
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    command = (f"python -m bench.compress.cpu_variants {rd} --batch {args.batch} --repeats {args.repeats}"
               + (f" --threads {args.threads}" if args.threads else ""))
    run = {"run_id": uuid.uuid4().hex[:12], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": command, "note": args.note, **host(), "threads": threads, "test_rows": int(len(y)),
           "batch": args.batch, "calibration": method}
    base, fp32 = med["torch eager fp32"], med["ORT student.onnx (FP32)"]
    records = [run | {"variant": k, "accuracy": acc[k], "acc_delta_pt": 100 * (acc[k] - acc["torch eager fp32"]),
                      "ms_per_batch": 1000 * med[k], "x_eager": base / med[k], "x_fp32": fp32 / med[k],
                      "qlinearconv": fused.get(k, (None, None))[0], "float_conv": fused.get(k, (None, None))[1]}
               for k in fns]
    print(f"cpu: {run['cpu']}; INT8 kernel family {run['int8_kernels']}; {threads} threads; batch {args.batch}; "
          f"{len(y)} test rows; 1-min load {run['load_avg_1m']}")
    print("| graph | test acc % | delta pt | fused QLinearConv / float Conv | ms / batch | x eager | x ORT FP32 |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        conv = "-" if r["qlinearconv"] is None else f"{r['qlinearconv']} / {r['float_conv']}"
        print(f"| {r['variant']} | {100 * r['accuracy']:.1f} | {r['acc_delta_pt']:+.1f} | {conv} | "
              f"{r['ms_per_batch']:.2f} | {r['x_eager']:.2f} | {r['x_fp32']:.2f} |")
    print(f"\nreproduce: {command}")
    if not args.no_records:
        append_records(args.records, records)
        print(f"{len(records)} records appended to {args.records} (run {run['run_id']})")
    for p in tmp.iterdir():
        p.unlink()
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
