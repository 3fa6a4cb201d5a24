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
shared machine's slow minute lands on all of them rather than on one; with ``--rounds R`` each batch's calls are
split into R interleaved rounds (A B C, A B C, ...) and every record keeps the per-round ratios to torch eager and to
ONNX Runtime FP32 (``x_eager_rounds``, ``x_fp32_rounds``: their spread is what the machine's load did to the ratio).
Each record also holds the graph's top-1 agreement with ONNX Runtime FP32 and its largest |logit| difference from it
on the test split (``agree_fp32_pct``, ``max_logit_err``). ``--records docs/records/compress-real.jsonl`` with
``--student`` (the arch as the run's config names it) is how the real students' runs are recorded
(``bench.compress.real`` drives them).
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

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / "docs" / "records" / "compress.jsonl"


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


def run_calibration(run_dir: Path):
    """The run's calibration set as ``CalibrationRows``: ``calib.npz`` names dataset rows (and their hashes) since
    the on-disk store; they are read from the run's dataset (an older ``calib.npz`` holding its inputs still opens)."""
    from fdkd.calibration.dataset import CalibrationRows
    from fdkd.pipeline.data.dataset import load_dataset
    from fdkd.pipeline.export import INPUT_NAME

    manifest = json.loads((run_dir / "manifest.json").read_text())
    with np.load(run_dir / "calib.npz", allow_pickle=False) as z:
        holds_inputs = INPUT_NAME in z.files
    if holds_inputs:
        return CalibrationRows(run_dir / "calib.npz", INPUT_NAME)
    ds = load_dataset(Path(manifest["artifacts"]["dataset"]["path"]))
    return CalibrationRows(run_dir / "calib.npz", INPUT_NAME, ds.x[manifest["student_modality"]], folder=run_dir)


def plain_cpu_graph(run_dir: Path, out: Path) -> Path | None:
    """The plain CPU INT8 graph (the build's calibrator, nothing searched) written to ``out`` when the run's
    ``student.int8cpu.onnx`` is a gate-searched one, so the table shows both; None when the run's is the plain one."""
    if not searched_as(run_dir / "student.int8cpu.onnx"):
        return None
    from fdkd.calibration.quantize import quantize_int8
    from fdkd.pipeline.export import INPUT_NAME

    cfg = json.loads((run_dir / "manifest.json").read_text())["config"]
    q = cfg["quantize"]
    quantize_int8(run_dir / "student.onnx", out, run_calibration(run_dir), INPUT_NAME, cfg["build"]["int8_method"],
                  exclude=tuple(q["exclude"]), percentile=q["percentile"], target="cpu")
    return out


def candidate_graphs(run_dir: Path, extra_dir: Path | None = None,
                     emulated: bool = True) -> list[tuple[str, Path, dict]]:
    """(label, path, OnnxRuntime options) of every ONNX graph of ``run_dir`` this bench times, in table order; a
    gate-searched graph is labelled so and, for the CPU graph, timed beside the plain one (made in ``extra_dir``).
    ``emulated=False`` leaves out the Q/DQ-emulated runs (a reference semantics no CPU server runs: on a real-size
    network they only cost time)."""
    out = []
    for name, kind in [("student.onnx", "FP32"), ("student.fp16.onnx", "FP16 graph")]:
        if (run_dir / name).exists():
            out.append((f"ORT {name} ({kind})", run_dir / name, {}))
    for p in sorted(run_dir.glob("student.int8.*.onnx")):
        tag = searched_as(p)
        out.append((f"ORT {p.name} (S8S8, Q/DQ fused: CPU kernels){tag}", p, {}))
        if emulated:
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


def interleaved(candidates: list, xb: np.ndarray, reps: int, rounds: int) -> dict[str, list[np.ndarray]]:
    """Per candidate label, ``rounds`` arrays of call times: round r times every candidate in turn (A B C, A B C),
    so a busy minute of a shared machine lands on every candidate's same round. With one round, each candidate is
    warmed up by 3 calls before its timed ones (as before); with more, by one call before the first round only (a
    224x224 network's batch of 64 takes seconds: three warm-ups per round would cost more than the timed calls)."""
    if rounds == 1:
        return {label: [timings(fn, xb, reps)] for label, _, fn, _ in candidates}
    for _, _, fn, _ in candidates:
        fn(xb)
    per = max(1, reps // rounds)
    out: dict[str, list[np.ndarray]] = {label: [] for label, *_ in candidates}
    for _ in range(rounds):
        for label, _, fn, _ in candidates:
            t = np.empty(per)
            for i in range(per):
                t0 = time.perf_counter()
                fn(xb)
                t[i] = time.perf_counter() - t0
            out[label].append(t)
    return out


def _ratios(base: list[np.ndarray], rounds: list[np.ndarray]) -> list[float]:
    """Per interleaved round, the baseline's median call time over the candidate's."""
    return [float(np.median(b) / np.median(r)) for b, r in zip(base, rounds, strict=True)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--repeats", type=int, default=100, help="timed calls at batch 1 (fewer at larger batches)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds the calls of each batch are split into")
    ap.add_argument("--min-repeats", type=int, default=20, help="timed calls at the largest batch, at least")
    ap.add_argument("--no-emulated", action="store_true", help="leave out the Q/DQ-emulated INT8 runs")
    ap.add_argument("--student", default="", help="the student's arch, recorded (the real-student section)")
    ap.add_argument("--records", type=Path, default=RECORDS, help="JSONL the records are appended to")
    ap.add_argument("--no-records", action="store_true", help="print only")
    ap.add_argument("--testset", type=Path, help="an .npz with the test rows (x, y) instead of the run's dataset")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)

    import torch

    from fdkd.pipeline.data.dataset import load_dataset
    from fdkd.pipeline.models.checkpoint import load_model
    from fdkd.serving.runtime.onnx import OnnxRuntime

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load_start = host()["load_avg_1m"]
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    if args.testset:  # the test rows as the run's validation stage saved them (x, y), for a run whose dataset file
        # the current code no longer reads (a run from before the on-disk store: its dataset is one .npz)
        with np.load(args.testset) as z:
            x, y = z["x"], z["y"]
    else:
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
    for label, path, opts in candidate_graphs(args.run_dir, Path(tmp.name), emulated=not args.no_emulated):
        rt = OnnxRuntime(path, threads=threads, **opts)
        name = path.name if path.parent == args.run_dir else f"{path.name} (made by the bench)"
        candidates.append((label, name, rt, rt.mode()))
    logits = {label: np.concatenate([fn(np.ascontiguousarray(x[i : i + 64])) for i in range(0, len(x), 64)])
              for label, _, fn, _ in candidates}
    acc = {label: float((v.argmax(1) == y).mean()) for label, v in logits.items()}
    fp32_label = next((c[0] for c in candidates if c[1] == "student.onnx"), "torch eager fp32")
    ref = logits[fp32_label]
    agree = {label: 100 * float((v.argmax(1) == ref.argmax(1)).mean()) for label, v in logits.items()}
    err = {label: float(np.abs(v.astype(np.float64) - ref).max()) for label, v in logits.items()}
    timed: dict[tuple[str, int], list[np.ndarray]] = {}
    for batch in args.batches:
        xb = np.resize(x[: min(len(x), batch)], (batch, *x.shape[1:])).astype(np.float32)
        reps = max(args.min_repeats, args.repeats * 8 // (8 + batch))  # 100 at batch 1 -> 88, 50, 20
        for label, t in interleaved(candidates, xb, reps, args.rounds).items():
            timed[label, batch] = t
    flops = conv_flops(student, x[:1])
    ceiling = matmul_ceiling()
    served = served_here(args.run_dir)
    command = (f"python -m bench.compress.run {args.run_dir} --repeats {args.repeats} --batches "
               + " ".join(map(str, args.batches)))
    if args.rounds > 1:
        command += f" --rounds {args.rounds}"
    if args.min_repeats != 20:
        command += f" --min-repeats {args.min_repeats}"
    if args.no_emulated:
        command += " --no-emulated"
    if args.testset:
        command += f" --testset {args.testset}"
    if args.student:
        command += f" --student {args.student} --records {args.records.relative_to(ROOT)}" \
            if args.records.is_relative_to(ROOT) else f" --student {args.student}"
    hw = host()
    run = {"run_id": uuid.uuid4().hex[:12], "started": started, "command": command, "note": args.note,
           **hw, "load_avg_1m": load_start, "load_avg_1m_end": hw["load_avg_1m"], "threads": threads,
           "test_rows": int(len(y)), "input_shape": list(x.shape[1:]), "mflop_per_sample": flops / 1e6,
           "matmul_gflops": ceiling, "served": served}
    if args.student:
        run["student"] = args.student
    records = []
    eager_acc = acc["torch eager fp32"]
    for label, name, _, mode in candidates:
        for batch in args.batches:
            rounds = timed[label, batch]
            t = np.concatenate(rounds)
            base, fp32 = timed["torch eager fp32", batch], timed[fp32_label, batch]
            records.append(run | {"artifact": label, "file": name, "mode": mode, "batch": batch,
                                  "accuracy": acc[label], "acc_delta_pt": 100 * (acc[label] - eager_acc),
                                  "agree_fp32_pct": agree[label], "max_logit_err": err[label],
                                  "repeats": len(t), "rows_per_s": batch / float(np.median(t)),
                                  "p50_ms": 1000 * float(np.median(t)), "p99_ms": 1000 * float(np.percentile(t, 99)),
                                  "x_eager": float(np.median(np.concatenate(base)) / np.median(t)),
                                  "x_fp32": float(np.median(np.concatenate(fp32)) / np.median(t)),
                                  "x_eager_rounds": _ratios(base, rounds), "x_fp32_rounds": _ratios(fp32, rounds)})
    from bench.compress.results import isa_summary, render_run

    print(f"cpu: {run['cpu']}; {isa_summary(run['simd_flags'])}; INT8 kernel family {run['int8_kernels']}\n")
    print(render_run(records))
    print(f"\nreproduce: {command}")
    if not args.no_records:
        append_records(args.records, records)
        print(f"\n{len(records)} records appended to {args.records} (run {run['run_id']})")


if __name__ == "__main__":
    main()
