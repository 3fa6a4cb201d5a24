"""Stage ``validate``: the teacher, ``student.pt`` and every artifact on the held-out test split.

Every ONNX artifact and engine runs through ``serving``'s runtimes (the code that will serve it).
Per artifact: top-1 accuracy, agreement with the teacher's and with ``student.pt``'s predictions,
max and mean |delta logit| and KL(student.pt || artifact), latency per batch. Gates per
precision (``validate.gates``): FP32 parity, FP16 and INT8 accuracy drop against ``student.pt``.
Where the dataset holds out whole accents (split ``test_unseen_accent``), ``student.pt``'s accuracy
on it is reported beside the in-domain test accuracy (``unseen_accent`` in ``validation.json``).
Writes ``validation.json`` and ``report.md`` (+ PNG plots) even when a gate fails, then raises
``ValidationFailed`` naming each failing artifact and metric.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from pipeline import artifacts
from pipeline.config import RunConfig


class ValidationFailed(RuntimeError):
    """At least one artifact failed its gate; the message names each artifact and metric."""


# file pattern -> (precision, target, runtime options); the one table of what validate runs and how
ARTIFACT_KINDS = [
    (artifacts.ONNX_FP32, "fp32", "onnxruntime/tensorrt", {}),
    (artifacts.ONNX_FP16, "fp16", "tensorrt (run here in onnxruntime)", {}),
    (artifacts.ONNX_INT8.format(method="*"), "int8", "tensorrt (Q/DQ emulated in onnxruntime)", {"emulate_qdq": True}),
    (artifacts.ONNX_INT8_CPU, "int8", "onnxruntime cpu", {}),
    ("student.*.plan", None, "tensorrt", {}),
]


def discover(run_dir: Path) -> list[dict]:
    """The artifacts present in ``run_dir``, in table order."""
    found = []
    for pattern, precision, target, opts in ARTIFACT_KINDS:
        for path in sorted(run_dir.glob(pattern)):
            prec = precision
            if prec is None:  # an engine: its precision is in its own sidecar
                info = path.with_name(path.stem + ".build.json")
                prec = json.loads(info.read_text())["precision"] if info.exists() else "unknown"
            found.append({"name": path.name, "path": path, "precision": prec, "target": target, "options": opts})
    return found


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def compare(logits: np.ndarray, ref: np.ndarray, teacher_pred: np.ndarray, y: np.ndarray) -> dict:
    p, q = _softmax(ref.astype(np.float64)), _softmax(logits.astype(np.float64))
    kl = float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))
    diff = np.abs(logits - ref)
    return {"accuracy": float((logits.argmax(1) == y).mean()),
            "agree_teacher": float((logits.argmax(1) == teacher_pred).mean()),
            "agree_student_pt": float((logits.argmax(1) == ref.argmax(1)).mean()),
            "max_abs_logit": float(diff.max()), "mean_abs_logit": float(diff.mean()), "kl_to_student_pt": kl}


def latency(fn, x: np.ndarray, batch: int, repeats: int) -> dict:
    xb = x[:batch] if len(x) >= batch else np.resize(x, (batch, *x.shape[1:]))
    fn(xb)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(xb)
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    return {"batch": batch, "ms_per_batch": ms, "rows_per_s": batch / (ms / 1000)}


def gate(entry: dict, cfg: RunConfig, ref_acc: float) -> dict:
    g = cfg.validate_.gates
    m = entry["metrics"]
    if entry["precision"] == "fp32":
        return {"metric": "max_abs_logit", "value": m["max_abs_logit"], "limit": g.fp32_max_abs_logit,
                "passed": m["max_abs_logit"] <= g.fp32_max_abs_logit and m["agree_student_pt"] == 1.0}
    limit = {"fp16": g.fp16_max_acc_drop_pt, "int8": g.int8_max_acc_drop_pt}.get(entry["precision"])
    if limit is None:
        return {"metric": "precision", "value": entry["precision"], "limit": None, "passed": False}
    drop = 100.0 * (ref_acc - m["accuracy"])
    return {"metric": "accuracy_drop_pt", "value": drop, "limit": limit, "passed": drop <= limit + 1e-9}


def run(cfg: RunConfig, ds, run_dir: Path) -> dict:
    """Validate everything in ``run_dir``; write validation.json and report.md; raise on a failed gate."""
    import torch

    from pipeline.models.checkpoint import load_model
    from pipeline.report import write_report
    from pipeline.stages import load_teacher
    from pipeline.train import predict
    from serving.runtime import load_runtime

    v = cfg.validate_
    s_mod, t_mod = cfg.student_modality, cfg.teacher.modality
    x, y = ds.take(s_mod, "test")
    xt, _ = ds.take(t_mod, "test")
    teacher, tpath = load_teacher(cfg, t_mod, ds)
    t_logits = predict(teacher, torch.from_numpy(xt)).numpy()
    teacher_pred = t_logits.argmax(1)
    student, _ = load_model(run_dir / artifacts.STUDENT)
    ref = predict(student, torch.from_numpy(x)).numpy()

    def torch_fn(batch):
        with torch.no_grad():
            return student(torch.from_numpy(batch)).numpy()

    entries = [{"name": "teacher", "precision": "fp32", "target": f"pytorch ({t_mod})", "path": str(tpath),
                "metrics": {"accuracy": float((teacher_pred == y).mean())}},
               {"name": artifacts.STUDENT, "precision": "fp32", "target": "pytorch eager",
                "metrics": compare(ref, ref, teacher_pred, y)
                | latency(torch_fn, x, v.latency_batch, v.latency_repeats),
                "predictions": ref.argmax(1).tolist()}]
    ref_acc = entries[1]["metrics"]["accuracy"]
    for art in discover(run_dir):
        entry = {"name": art["name"], "precision": art["precision"], "target": art["target"]}
        try:
            rt = load_runtime(art["path"], **art["options"])
        except (ImportError, RuntimeError) as e:  # no TensorRT / GPU here, or an engine for another GPU
            entries.append(entry | {"skipped": f"{type(e).__name__}: {e}" if str(e) else type(e).__name__})
            continue
        logits = rt(x)
        entry["runtime"] = rt.describe()
        entry["metrics"] = compare(logits, ref, teacher_pred, y) | latency(rt, x, v.latency_batch, v.latency_repeats)
        entry["predictions"] = logits.argmax(1).tolist()
        entry["gate"] = gate(entry, cfg, ref_acc)
        entries.append(entry)
    failed = [e for e in entries if "gate" in e and not e["gate"]["passed"]]
    result = {"split": "test", "rows": int(len(y)), "class_names": ds.class_names, "labels": y.tolist(),
              "student_modality": s_mod, "teacher_modality": t_mod, "passed": not failed, "artifacts": entries}
    if s_mod == "audio" and ds.has_split("test_unseen_accent"):  # whole eSpeak accents no other split hears
        xu, yu = ds.take(s_mod, "test_unseen_accent")
        result["unseen_accent"] = {"split": "test_unseen_accent", "rows": int(len(yu)),
                                   "accents": ds.meta.get("accent_splits", {}).get("test_unseen_accent", []),
                                   "test_acc": ref_acc,
                                   "test_unseen_accent_acc": float((predict(student, torch.from_numpy(xu)).numpy()
                                                                    .argmax(1) == yu).mean())}
    artifacts.write_json(run_dir / artifacts.VALIDATION, result)
    write_report(result, run_dir)
    if failed:
        raise ValidationFailed("validation gate failed: " + "; ".join(
            f"{e['name']} {e['gate']['metric']}={e['gate']['value']:.4g} (limit {e['gate']['limit']})" for e in failed))
    return result
