"""The INT8 gate search: when an INT8 graph fails its gate on the validation split, find one that passes.

Run by the ``quantize`` stage for two graphs: the TensorRT graph the build uses
(``student.int8.<build.int8_method>.onnx``, judged with Q/DQ emulated, its reference semantics, against the INT8
gate) and the CPU graph (``student.int8cpu.onnx``, judged with Q/DQ fused by ONNX Runtime's CPU kernels, against
the CPU bar ``validate.gates.int8_cpu_max_acc_drop_pt``). Each attempt is one pass over the **validation** split,
judged against ``student.onnx`` on the same rows by the same ``gate`` as validation (paired decision included);
the test split is never looked at, and validation then gates the graph that passed on test as any other.

The order, stopping at the first graph that passes:

1. the plain graph (``quantize.calib_methods`` / the build's method, ``quantize.exclude`` in float);
2. every other calibrator (``quantize.search_calibrators``): minmax, entropy, percentile at ``quantize.percentile``
   and at ``quantize.search_percentile``;
3. from the calibrator that scored best (least drop, then most agreement), the layers ``sensitivity.json`` ranks
   worst kept in float, one more at a time (``ranked_layers``: every quantized node it names, not only
   Conv/MatMul/Gemm). In the TensorRT graph a layer kept in float
   has no Q/DQ around it: TensorRT runs it in FP16 where the build enables FP16 tactics, else FP32; in the CPU
   graph it runs in FP32.

The budget (documented in the README): at most ``quantize.search_max_float_frac`` of the quantized layers
``sensitivity.json`` names in float (rounded down) and at most ``quantize.search_max_passes`` validation passes per
graph.

What passed is written where the build and the server look: a TensorRT graph that is not one of the plain
per-calibrator files becomes ``student.int8.search.onnx`` (its calibration and float layers in its metadata),
the CPU graph replaces ``student.int8cpu.onnx``. Every attempt, its score and the float layers are recorded in
``int8_search.json`` (``SEARCH``), which validation copies into ``validation.json`` and ``report.md``; a graph whose
search found nothing is failed there whatever its test score, so it is never served or built.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fdkd import artifacts
from fdkd.pipeline.config import RunConfig
from fdkd.pipeline.search_record import SEARCHED
from fdkd.pipeline.validate import CPU_FUSED, REFERENCE, gate, gate_text

# target -> (runtime options it is judged with, the validation role whose gate it must pass)
TARGETS = {"tensorrt": ({"emulate_qdq": True}, REFERENCE), "cpu": ({}, CPU_FUSED)}


def ranked_layers(sensitivity: list[dict]) -> list[str]:
    """The quantized nodes ``sensitivity.json`` names (its ``layers``), worst SQNR first, each once.

    Every op type, not only Conv/MatMul/Gemm: a node kept in float keeps its *inputs* unquantized, and the
    activations that clip are as often an Add's or a pooling's as a convolution's (on the tiny test student, keeping
    the three worst convolutions in float changed nothing; the Add after them did)."""
    out: list[str] = []
    for row in sensitivity:
        if row.get("node") and row["node"] not in out:
            out.append(row["node"])
    return out


class _Judge:
    """One validation pass: the graph's top-1 on the validation split against ``student.onnx``'s, gated.

    ``x``: the validation rows' features, read from the dataset once (an array, or a ``FeatureSpool`` for a
    streamed dataset); each pass runs the graph on them in batched runtime calls (``fdkd.row_features.apply``)."""

    def __init__(self, cfg: RunConfig, fp32: Path, x, y: np.ndarray) -> None:
        from fdkd.row_features import apply
        from fdkd.serving.runtime import load_runtime

        self.cfg, self.x, self.y = cfg, x, y
        self.threads = cfg.validate_.threads or cfg.threads
        self.ref = apply(load_runtime(fp32, threads=self.threads, mem_pattern=False), x).argmax(1)
        self.ref_acc = float((self.ref == y).mean())

    def __call__(self, path: Path, target: str) -> dict:
        from fdkd.row_features import apply
        from fdkd.serving.runtime import load_runtime

        opts, role = TARGETS[target]
        pred = apply(load_runtime(path, threads=self.threads, mem_pattern=False, **opts), self.x).argmax(1)
        entry = {"precision": "int8", "target": role,
                 "metrics": {"accuracy": float((pred == self.y).mean()),
                             "agree_student_pt": float((pred == self.ref).mean())}}
        g = gate(entry, self.cfg.validate_.gates, self.ref_acc, {"y": self.y, "ref_pred": self.ref, "pred": pred})
        drop, agree = g["checks"]
        ref_ok, ok = self.ref == self.y, pred == self.y
        return {"val_accuracy": entry["metrics"]["accuracy"], "drop_pt": drop["value"], "agree_pct": agree["value"],
                "rows_lost": int((ref_ok & ~ok).sum()), "rows_gained": int((~ref_ok & ok).sum()),
                "rows_changed": int((pred != self.ref).sum()), "passed": g["passed"], "gate": gate_text(g)}


def search(cfg: RunConfig, target: str, plain: Path, judge: _Judge, calib, input_name: str,
           layers: list[str], n_layers: int) -> dict:
    """Search one graph (``plain``, already written); returns its record for ``int8_search.json``."""
    from fdkd.calibration.quantize import quantize_int8

    q, rd, fp32 = cfg.quantize, plain.parent, plain.parent / artifacts.ONNX_FP32
    method = cfg.build.int8_method
    budget = {"max_passes": q.search_max_passes, "quantized_layers": n_layers,
              "max_float_layers": math.floor(q.search_max_float_frac * n_layers)}
    gates = cfg.validate_.gates
    limit = gates.int8_cpu_max_acc_drop_pt if target == "cpu" else gates.int8_max_acc_drop_pt
    rec = {"target": target, "graph": plain.name, "split": "val", "rows": int(len(judge.y)),
           "bar": {"max_acc_drop_pt": limit, "min_agree_pct": gates.int8_min_agree_pct, "decide": gates.decide},
           "budget": budget, "attempts": [], "passed": False, "chosen": None}

    def pct_of(m: str) -> float | None:
        return q.percentile if m == "percentile" else None

    def attempt(path: Path, m: str, pct: float | None, floats: tuple[str, ...], step: str) -> dict:
        r = {"step": step, "calibration": m, "percentile": pct, "float_layers": list(floats)} | judge(path, target)
        r["path"] = path
        rec["attempts"].append(r)
        return r

    first = attempt(plain, method, pct_of(method), (), "plain")
    won = first if first["passed"] else None
    stopped = "passed" if won else ("search off (quantize.search: false)" if not q.search else "")
    with tempfile.TemporaryDirectory(dir=rd) as tmp:
        def make(m: str, pct: float | None, floats: tuple[str, ...]) -> Path:
            tag = f"{m}{'' if pct is None else f'-{pct:g}'}-{len(floats)}"
            out = Path(tmp) / f"{target}-{tag}.onnx"
            quantize_int8(fp32, out, calib, input_name, m, exclude=tuple(q.exclude) + floats,
                          percentile=pct or q.percentile, target=target, activation_mb=q.calib_activation_mb,
                          metadata={"fdkd.search.float_layers": ",".join(floats),
                                    **({"fdkd.search.percentile": f"{pct:g}"} if pct is not None else {})})
            return out

        if not stopped:
            tried = {(method, pct_of(method))}
            named = {"minmax": ("minmax", None), "entropy": ("entropy", None),
                     "percentile": ("percentile", q.percentile), "percentile2": ("percentile", q.search_percentile)}
            for m, pct in (named[c] for c in q.search_calibrators):
                if (m, pct) in tried:
                    continue
                if len(rec["attempts"]) >= budget["max_passes"]:
                    stopped = "validation passes spent"
                    break
                tried.add((m, pct))
                existing = rd / artifacts.ONNX_INT8.format(method=m)
                reuse = (target == "tensorrt" and m in q.calib_methods and pct in (None, q.percentile)
                         and existing.exists())
                r = attempt(existing if reuse else make(m, pct, ()), m, pct, (), "calibrator")
                if r["passed"]:
                    won, stopped = r, "passed"
                    break
        if not stopped:
            base = min(rec["attempts"], key=lambda a: (a["drop_pt"], -a["agree_pct"]))
            floats: tuple[str, ...] = ()
            for layer in (x for x in layers if x not in q.exclude):
                if len(floats) >= budget["max_float_layers"]:
                    stopped = f"float-layer budget spent ({budget['max_float_layers']} of {n_layers} layers)"
                    break
                if len(rec["attempts"]) >= budget["max_passes"]:
                    stopped = "validation passes spent"
                    break
                floats += (layer,)
                r = attempt(make(base["calibration"], base["percentile"], floats), base["calibration"],
                            base["percentile"], floats, "float layers")
                if r["passed"]:
                    won, stopped = r, "passed"
                    break
            stopped = stopped or (f"float-layer budget spent ({budget['max_float_layers']} of {n_layers} layers)"
                                  if len(floats) >= budget["max_float_layers"] else "no layers left to keep in float")
        if won is not None:
            rec |= {"passed": True, "calibration": won["calibration"], "percentile": won["percentile"],
                    "float_layers": won["float_layers"], "chosen": _place(won["path"], target, rd)}
    if target == "tensorrt" and rec["chosen"] != SEARCHED:
        (rd / SEARCHED).unlink(missing_ok=True)  # a stale search graph is not this run's
    rec["stopped"] = stopped
    for a in rec["attempts"]:
        path = a.pop("path")
        a["graph"] = path.name if path.parent == rd else "(temporary)"
    return rec


def _place(path: Path, target: str, rd: Path) -> str:
    """Where the graph that passed goes: a plain file stays; a made one becomes the searched/CPU graph."""
    if path.parent == rd:
        return path.name
    name = SEARCHED if target == "tensorrt" else artifacts.ONNX_INT8_CPU
    with artifacts.atomic_write(rd / name) as f, path.open("rb") as src:
        shutil.copyfileobj(src, f)
    return name


def run(cfg: RunConfig, ds, sensitivity: list[dict] | None, calib=None) -> dict:
    """Judge (and where they fail, search) the build's TensorRT INT8 graph and the CPU INT8 graph.

    ``calib``: the stage's ``CalibrationRows`` (read once by the quantize stage); None opens the run's ``calib.npz``
    against ``ds``. The validation rows are read from ``ds`` once, for every attempt (a streamed dataset's into a
    spool file under the run folder, removed after)."""
    from fdkd.calibration.dataset import CalibrationRows
    from fdkd.calibration.sensitivity import layer_errors
    from fdkd.pipeline.export import INPUT_NAME
    from fdkd.row_features import gather

    rd = cfg.run_dir
    fp32 = rd / artifacts.ONNX_FP32
    with tempfile.TemporaryDirectory(dir=rd, prefix=".int8-search-") as tmp:
        if calib is None:
            calib = CalibrationRows(rd / artifacts.CALIB, INPUT_NAME, ds.x[cfg.student_modality], Path(tmp))
        rows = ds.indices("val")
        x, _ = gather(ds.x[cfg.student_modality], rows, Path(tmp), "val")
        y = ds.y[rows]
        judge = _Judge(cfg, fp32, x, y)
        trt = rd / artifacts.ONNX_INT8.format(method=cfg.build.int8_method)
        if sensitivity is None:
            sensitivity = layer_errors(fp32, rd / artifacts.ONNX_INT8_CPU, calib, INPUT_NAME,
                                       cfg.quantize.calib_activation_mb)
        layers = ranked_layers(sensitivity)
        n_layers = len(layers)
        out = {"split": "val", "rows": int(len(y)), "reference": artifacts.ONNX_FP32,
               "ref_val_accuracy": judge.ref_acc, "graphs": []}
        if trt.exists():
            out["graphs"].append(search(cfg, "tensorrt", trt, judge, calib, INPUT_NAME, layers, n_layers))
        else:
            (rd / SEARCHED).unlink(missing_ok=True)
        out["graphs"].append(search(cfg, "cpu", rd / artifacts.ONNX_INT8_CPU, judge, calib, INPUT_NAME, layers,
                                    n_layers))
    return out
