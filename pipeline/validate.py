"""Stage ``validate``: the teacher, ``student.pt`` and every artifact on the held-out test split.

Every ONNX artifact and engine runs through ``serving``'s runtimes (the code that will serve it).
Each result is one entry of ``validation.json`` that records the artifact's **sha256** and the exact
**execution mode** it was judged in (runtime, provider, graph-optimisation level, Q/DQ fused or
emulated, threads; for engines the TensorRT version and GPU). The server loads an artifact only
when an entry with its hash and its serving mode passed (``fdkd.serving.model``).

Per entry: top-1 accuracy, agreement with the teacher's and with ``student.pt``'s predictions,
max and mean |delta logit| and KL(student.pt || artifact), latency per batch. Gates per precision
(``validate.gates``): FP32 parity (max |delta logit| and identical top-1), FP16 and INT8 accuracy
drop against ``student.pt`` and top-1 agreement with it.

The TensorRT-target INT8 graphs run here twice: with Q/DQ emulated (unfused: the graph's reference
semantics, which TensorRT approximates with fused INT8 kernels; this entry is the graph's gate) and
with Q/DQ fused by ONNX Runtime's CPU kernels (how the CPU would serve it; gated too, but failing it
only makes that mode unservable). Engines that cannot run here, and engines the build stage could
not make, are listed under ``not_validated`` and the result says ``complete: false``.

FP16 and INT8 checks decide on the rows that changed (``validate.gates.decide``, ``fdkd.pipeline.gate_stats``);
INT8 served by ONNX Runtime's CPU kernels is held to the CPU bar. A graph whose INT8 gate search
(``fdkd.pipeline.int8_search``, on the validation split) found nothing that passed is failed here too.

Writes ``validation.json``, ``report.md`` (+ PNG plots) and ``validation.testset.npz`` even when a gate fails.
The test set is NOT a copy of the inputs: it holds the test rows' indices in the dataset (``rows``), each row's
input hash (``sha256`` of its float32 features, ``fdkd.row_features.row_sha256``), the labels (``y``),
``student.pt``'s logits (``ref_logits``) and the teacher's predictions (``teacher_pred``).

The test rows are read from the dataset once (a dense dataset: the arrays as before; a streamed one: spooled to a
file in a temporary folder of the run) and every model and artifact runs on them in batched calls
(``fdkd.row_features.apply``); the teacher's rows and the unseen-accent split are read in one chunked pass.

Only a failed ``student.onnx`` raises ``ValidationFailed`` (naming each failing artifact and metric); another
failed artifact is listed under ``failed``, never served, and the run ships what passed (``shipped``,
``targets``). ``validate_engine`` gates an engine built later (``fdkd engine``, a container's first start) on that
test set, without torch, into ``validation.json`` beside the engine, which is where the server looks for the
engine's own entry: it re-reads the test rows from the run's dataset (or ``--dataset PATH`` where it moved), in
chunks, and refuses a row whose input no longer hashes as recorded, naming it.

Where the dataset holds out whole accents (split ``test_unseen_accent``), ``student.pt``'s accuracy
on it is reported beside the in-domain test accuracy (``unseen_accent`` in ``validation.json``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from fdkd import artifacts
from fdkd.pipeline.config import GateConfig, RunConfig


class ValidationFailed(RuntimeError):
    """At least one artifact failed its gate; the message names each artifact and metric."""


REFERENCE = "reference semantics: Q/DQ emulated (unfused) in onnxruntime; TensorRT fuses them and approximates this"
CPU_FUSED = "onnxruntime cpu, Q/DQ fused into INT8 kernels (how the CPU serves it)"

# file pattern -> (precision, target, modes it runs in: (runtime options, role, required)); the one table of what
# validate runs and how. A required entry's failed gate fails the run; another's only makes its mode unservable.
ARTIFACT_KINDS = [
    (artifacts.ONNX_FP32, "fp32", [({}, "onnxruntime cpu (source of every engine)", True)]),
    (artifacts.ONNX_FP16, "fp16", [({}, "tensorrt graph, run here in onnxruntime cpu", True)]),
    (artifacts.ONNX_INT8.format(method="*"), "int8", [({"emulate_qdq": True}, REFERENCE, True),
                                                      ({}, CPU_FUSED, False)]),
    (artifacts.ONNX_INT8_CPU, "int8", [({}, CPU_FUSED, True)]),
    ("student.*.plan", None, [({}, "tensorrt engine", True)]),
]


def discover(run_dir: Path) -> list[dict]:
    """The (artifact, mode) pairs to validate in ``run_dir``, in table order."""
    found = []
    for pattern, precision, modes in ARTIFACT_KINDS:
        for path in sorted(run_dir.glob(pattern)):
            prec = precision
            if prec is None:  # an engine: its precision is in its own sidecar
                info = path.with_name(path.stem + ".build.json")
                prec = json.loads(info.read_text())["precision"] if info.exists() else "unknown"
            for opts, target, required in modes:
                found.append({"name": path.name, "path": path, "precision": prec, "target": target,
                              "options": opts, "required": required})
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
            "max_abs_logit": float(diff.max()), "mean_abs_logit": float(diff.mean()), "kl_to_student_pt": kl,
            "logit_scale": max(1.0, float(np.abs(ref).max()))}


def latency(fn, x, batch: int, repeats: int) -> dict:
    """Median time of ``fn`` on one batch of ``batch`` rows: ``x``'s first rows (an array or a spool), repeated
    where ``x`` has fewer."""
    head = np.asarray(x[: min(batch, len(x))], np.float32)
    xb = head if len(head) >= batch else np.resize(head, (batch, *head.shape[1:]))
    fn(xb)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(xb)
        times.append(time.perf_counter() - t0)
    ms = 1000 * float(np.median(times))
    return {"batch": batch, "ms_per_batch": ms, "rows_per_s": batch / (ms / 1000)}


def _check(metric: str, value: float, op: str, limit: float) -> dict:
    ok = value <= limit + 1e-9 if op == "<=" else value >= limit - 1e-9
    return {"metric": metric, "value": value, "op": op, "limit": limit, "passed": bool(ok)}


def _limits(entry: dict, gates: GateConfig) -> tuple[float, float]:
    """(max accuracy drop, min agreement) of a FP16 or INT8 entry; INT8 served by ONNX Runtime's CPU kernels is
    held to the CPU bar (``int8_cpu_max_acc_drop_pt``), the bar ``fdkd serve``'s auto stays within."""
    if entry["precision"] == "fp16":
        return gates.fp16_max_acc_drop_pt, gates.fp16_min_agree_pct
    cpu = entry.get("target") == CPU_FUSED
    return (gates.int8_cpu_max_acc_drop_pt if cpu else gates.int8_max_acc_drop_pt), gates.int8_min_agree_pct


def gate(entry: dict, gates: GateConfig, ref_acc: float, rows: dict | None = None) -> dict:
    """Every check of ``entry``'s precision; ``passed`` only if all pass. ``metric``/``value``/``limit``
    repeat the first failing check (or the first check when all pass) for one-line messages.

    ``rows`` (``{"y", "ref_pred", "pred"}``: labels, the reference's and the artifact's top-1 per row) lets FP16
    and INT8 checks decide on the rows that changed (``gates.decide="paired"``, ``fdkd.pipeline.gate_stats``);
    each such check also reports the rows lost, gained and changed and its p-value."""
    from fdkd.pipeline import gate_stats

    m = entry["metrics"]
    agree = 100.0 * m["agree_student_pt"]
    if entry["precision"] == "fp32":
        # the limit scales with student.pt's largest |logit| (float rounding does); records without it: 1
        limit = gates.fp32_max_abs_logit * m.get("logit_scale", 1.0)
        checks = [_check("max_abs_logit", m["max_abs_logit"], "<=", limit),
                  _check("agree_student_pt_pct", agree, ">=", 100.0)]
    elif entry["precision"] in ("fp16", "int8"):
        drop_limit, agree_limit = _limits(entry, gates)
        checks = [_check("accuracy_drop_pt", 100.0 * (ref_acc - m["accuracy"]), "<=", drop_limit),
                  _check("agree_student_pt_pct", agree, ">=", agree_limit)]
        if rows is not None and gates.decide == "paired":
            y, ref, pred = (np.asarray(rows[k]) for k in ("y", "ref_pred", "pred"))
            d = gate_stats.drop_test(ref == y, pred == y, drop_limit, gates.alpha)
            a = gate_stats.agree_test(int((pred != ref).sum()), len(y), agree_limit, gates.alpha)
            for c, t in zip(checks, (d, a), strict=True):
                c.update({k: v for k, v in t.items() if k != "value"}, decide="paired", alpha=gates.alpha,
                         point_passed=c["passed"])
    else:
        checks = [{"metric": "precision", "value": entry["precision"], "op": "in", "limit": ["fp32", "fp16", "int8"],
                   "passed": False}]
    head = next((c for c in checks if not c["passed"]), checks[0])
    return {"passed": all(c["passed"] for c in checks), "checks": checks,
            "metric": head["metric"], "value": head["value"], "limit": head["limit"]}


def gate_text(g: dict) -> str:
    """``accuracy_drop_pt=1.2 (<= 1.0)`` for each failing check (every check when none fails)."""
    bad = [c for c in g["checks"] if not c["passed"]] or g["checks"]
    return ", ".join(f"{c['metric']}={c['value']:.4g} ({c['op']} {c['limit']})" if isinstance(c["value"], float)
                     else f"{c['metric']}={c['value']} ({c['op']} {c['limit']})" for c in bad)


def _not_built(run_dir: Path, cfg: RunConfig) -> list[dict]:
    """Engines the build stage was asked for but could not make on this machine."""
    path = run_dir / artifacts.MANIFEST
    stage = json.loads(path.read_text()).get("stages", {}).get("build", {}) if path.exists() else {}
    if stage.get("status") != "skipped":
        return []
    return [{"name": f"tensorrt {p} engine", "reason": f"not built here: {stage.get('reason', 'build skipped')}"}
            for p in cfg.build.precisions]


def run(cfg: RunConfig, ds, run_dir: Path) -> dict:
    """Validate everything in ``run_dir``; write validation.json and report.md. Raise only when ``student.onnx``
    fails its gate (every other graph comes from it); any other failed graph is recorded as failed (never served)
    and the run ships what passed (``fdkd run --strict`` exits 1 on those too)."""
    v = cfg.validate_
    s_mod, t_mod = cfg.student_modality, cfg.teacher.modality
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".validate-") as tmp:
        return _run(cfg, ds, run_dir, v, s_mod, t_mod, Path(tmp))


def _rows_of(x, rows: np.ndarray):
    """``x``'s ``rows`` for one chunked pass: an array (dense) or a lazy view (streamed: nothing read yet)."""
    from fdkd.row_features import is_dense

    return x[rows] if is_dense(x) else x.view(rows)


def _run(cfg: RunConfig, ds, run_dir: Path, v, s_mod: str, t_mod: str, tmp: Path) -> dict:
    import torch

    from fdkd.pipeline.models.checkpoint import describe, load_model
    from fdkd.pipeline.report import write_report
    from fdkd.pipeline.teacher import load_teacher
    from fdkd.pipeline.train import predict
    from fdkd.row_features import apply, gather
    from fdkd.serving.runtime import load_runtime

    test_rows = ds.indices("test")
    y = ds.y[test_rows]
    x, digests = gather(ds.x[s_mod], test_rows, tmp, "test")  # every artifact below runs on these rows

    def logits_of(model, rows_x) -> np.ndarray:
        return apply(lambda c: predict(model, torch.from_numpy(np.ascontiguousarray(c))).numpy(), rows_x)

    teacher, tpath = load_teacher(cfg, t_mod, ds)
    teacher_pred = logits_of(teacher, _rows_of(ds.x[t_mod], test_rows)).argmax(1)
    student, ckpt = load_model(run_dir / artifacts.STUDENT)
    ref = logits_of(student, x)

    def torch_fn(batch):
        with torch.no_grad():
            return student(torch.from_numpy(batch)).numpy()

    torch_mode = {"runtime": "pytorch", "provider": "cpu", "threads": torch.get_num_threads()}
    entries = [{"name": "teacher", "precision": "fp32", "target": f"pytorch ({t_mod})", "path": str(tpath),
                "sha256": artifacts.sha256_file(tpath), "mode": torch_mode,
                "metrics": {"accuracy": float((teacher_pred == y).mean())}},
               {"name": artifacts.STUDENT, "precision": "fp32", "target": "pytorch eager",
                "sha256": artifacts.sha256_file(run_dir / artifacts.STUDENT), "mode": torch_mode,
                "metrics": compare(ref, ref, teacher_pred, y)
                | latency(torch_fn, x, v.latency_batch, v.latency_repeats),
                "predictions": ref.argmax(1).tolist()}]
    ref_acc = entries[1]["metrics"]["accuracy"]
    artifacts.save_npz(run_dir / artifacts.TESTSET, {"rows": test_rows.astype(np.int64), "sha256": digests,
                                                     "input_shape": np.asarray(x.shape[1:], np.int64), "y": y,
                                                     "ref_logits": ref, "teacher_pred": teacher_pred})
    not_validated = _not_built(run_dir, cfg)
    from fdkd.pipeline.search_record import SEARCH, failed_graphs

    search = json.loads((run_dir / SEARCH).read_text()) if (run_dir / SEARCH).exists() else None
    searched_out = failed_graphs(search)
    hashes: dict[Path, str] = {}
    for art in discover(run_dir):
        sha = hashes.setdefault(art["path"], artifacts.sha256_file(art["path"]))
        entry = {"name": art["name"], "sha256": sha, "precision": art["precision"], "target": art["target"],
                 "required": art["required"]}
        threads = v.threads or cfg.threads
        # ONNX Runtime sessions: the stage's threads, and no per-shape memory plan (a pass over the test split:
        # its memory then does not depend on how many full chunks the split fills; ``OnnxRuntime``)
        onnx = {"threads": threads, "mem_pattern": False} if art["path"].suffix == ".onnx" else {}
        opts = dict(art["options"], **onnx)
        try:
            rt = load_runtime(art["path"], **opts)
        except (ImportError, RuntimeError) as e:  # no TensorRT / GPU here, or an engine for another GPU
            reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            entries.append(entry | {"skipped": reason})
            not_validated.append({"name": art["name"], "reason": f"could not run here: {reason}"})
            continue
        logits = apply(rt, x)
        entry["mode"] = rt.mode()
        entry["runtime"] = rt.describe()
        entry["metrics"] = compare(logits, ref, teacher_pred, y) | latency(rt, x, v.latency_batch, v.latency_repeats)
        entry["predictions"] = logits.argmax(1).tolist()
        entry["gate"] = gate(entry, v.gates, ref_acc, {"y": y, "ref_pred": ref.argmax(1), "pred": logits.argmax(1)})
        if art["name"] in searched_out:  # its search found no graph that passed on validation: never served
            entry["gate"] = _search_failed(entry["gate"], searched_out[art["name"]])
        entries.append(entry)
    failed = [e for e in entries if e.get("required") and "gate" in e and not e["gate"]["passed"]]
    fp32_failed = [e for e in failed if e["name"] == artifacts.ONNX_FP32]
    result = {"split": "test", "rows": int(len(y)), "class_names": ds.class_names, "labels": y.tolist(),
              "student_modality": s_mod, "teacher_modality": t_mod, "passed": not failed,
              "shipped": not fp32_failed and any(e["name"] == artifacts.ONNX_FP32 for e in entries),
              "failed": sorted({e["name"] for e in failed}), "targets": _targets(entries),
              "warnings": _resolution_warnings(len(y), v.gates), "int8_search": search,
              "complete": not not_validated, "not_validated": not_validated, "artifacts": entries,
              "models": {"teacher": describe(tpath), "student": describe(run_dir / artifacts.STUDENT)},
              "distill": {"method": ckpt.get("metrics", {}).get("method"),
                          "auto": ckpt.get("metrics", {}).get("auto"),
                          "labels": ckpt.get("metrics", {}).get("labels"),
                          "training": ckpt.get("metrics", {}).get("training")},
              "teacher": {"training": _teacher_training(tpath)}}
    if s_mod == "audio" and ds.has_split("test_unseen_accent"):  # whole eSpeak accents no other split hears
        unseen = ds.indices("test_unseen_accent")
        yu = ds.y[unseen]
        result["unseen_accent"] = {"split": "test_unseen_accent", "rows": int(len(yu)),
                                   "accents": ds.meta.get("accent_splits", {}).get("test_unseen_accent", []),
                                   "test_acc": ref_acc,
                                   "test_unseen_accent_acc": float((logits_of(student, _rows_of(ds.x[s_mod], unseen))
                                                                    .argmax(1) == yu).mean())}
    artifacts.write_json(run_dir / artifacts.VALIDATION, result)
    write_report(result, run_dir)
    if fp32_failed:
        raise ValidationFailed("validation gate failed: " + "; ".join(
            f"{e['name']} {gate_text(e['gate'])} in mode [{_mode_text(e)}]" for e in failed))
    return result


def _teacher_training(path: Path) -> dict | None:
    """How the teacher trained and why it stopped (an fdkd checkpoint trained here), else None."""
    from fdkd.pipeline.models.checkpoint import FORMAT, is_torchscript, read_checkpoint

    if is_torchscript(path):
        return None
    try:
        ckpt = read_checkpoint(path)
    except ValueError:
        return None
    return ckpt.get("metrics", {}).get("training") if ckpt.get("format") == FORMAT else None


def _search_failed(g: dict, rec: dict) -> dict:
    """``g`` with a failing ``int8_search`` check: the graph's search (on validation) found nothing that passed."""
    check = {"metric": "int8_search", "value": f"no passing graph in {len(rec['attempts'])} attempts on val",
             "op": "==", "limit": "a graph that passed", "passed": False}
    return g | {"passed": False, "checks": [*g["checks"], check]} | (
        {k: check[k] for k in ("metric", "value", "limit")} if g["passed"] else {})


def _targets(entries: list[dict]) -> dict[str, list[str]]:
    """Per target (TensorRT, the CPU): the artifacts whose required entry passed. student.onnx is in both: it is
    served on the CPU and is the source of a TensorRT FP32 engine."""
    out: dict[str, list[str]] = {"cpu": [], "tensorrt": []}
    for e in entries:
        if not e.get("required") or not e.get("gate", {}).get("passed"):
            continue
        if e["name"] == artifacts.ONNX_FP32:
            out["cpu"].append(e["name"])
            out["tensorrt"].append(e["name"])
        else:
            out["cpu" if e["name"] == artifacts.ONNX_INT8_CPU else "tensorrt"].append(e["name"])
    return out


def _resolution_warnings(n: int, gates: GateConfig) -> list[str]:
    """Gates this test split is too small to decide at a 1-point resolution (paired decisions only)."""
    from fdkd.pipeline.gate_stats import resolution_warning

    if gates.decide != "paired" or n == 0:
        return []
    out = []
    for what, limit in (("INT8 gate", gates.int8_max_acc_drop_pt), ("CPU INT8 gate", gates.int8_cpu_max_acc_drop_pt),
                        ("FP16 gate", gates.fp16_max_acc_drop_pt)):
        w = resolution_warning(n, limit, gates.alpha, f"{what} on the test split")
        if w:
            out.append(w)
    return out


def _mode_text(entry: dict) -> str:
    m = entry.get("mode", {})
    return ", ".join(f"{k}={v}" for k, v in m.items() if v is not None)


def _testset_inputs(run_dir: Path, manifest: dict, z, dataset):
    """The student's column of the run's dataset (``dataset``: where it is now, overriding the run's manifest; or a
    dataset already loaded), to re-read ``validation.testset.npz``'s rows from; numpy only (the dataset's decoding
    and frontends)."""
    from fdkd.pipeline.data.dataset import load_dataset

    if hasattr(dataset, "x"):  # loaded already (a PairedDataset)
        ds, dataset = dataset, getattr(dataset, "path", None) or "(given)"
    else:
        if dataset is None:
            rec = manifest["artifacts"].get("dataset")
            if rec is None:
                raise ValueError(f"{run_dir}'s manifest names no dataset: pass --dataset PATH")
            dataset = Path(rec["path"]) if Path(rec["path"]).is_absolute() else run_dir / rec["path"]
        if not Path(dataset).exists():
            raise ValueError(f"the run's dataset {dataset} is not there (moved?): pass --dataset PATH, where it is now")
        ds = load_dataset(Path(dataset))
    x = ds.x[manifest["student_modality"]]
    rows = z["rows"].astype(np.int64)
    if len(rows) and rows.max() >= len(x):
        raise ValueError(f"{artifacts.TESTSET} names row {int(rows.max())}, but the dataset {dataset} has {len(x)} "
                         "rows: not the run's dataset")
    if tuple(z["input_shape"].tolist()) != tuple(x.shape[1:]):
        raise ValueError(f"{artifacts.TESTSET}'s inputs are {tuple(z['input_shape'].tolist())}; the dataset "
                         f"{dataset} gives {tuple(x.shape[1:])}: not the run's dataset")
    return x, getattr(ds, "keys", None), dataset


def open_testset(run_dir: Path, dataset=None):
    """``(manifest, testset arrays, its manifest record, features)``: the run's ``validation.testset.npz`` checked
    against the manifest, and a generator of ``(lo, hi, features)`` over its rows re-read from the run's dataset
    (``dataset``: its path now, or the dataset loaded) in chunks, raising ``ValueError`` naming the first row whose
    input no longer hashes as recorded. Numpy only."""
    from fdkd.row_features import hex_digest, row_chunks, row_sha256

    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / artifacts.MANIFEST).read_text())
    rec = manifest["artifacts"].get(artifacts.TESTSET)
    testset = run_dir / artifacts.TESTSET
    if rec is None or not testset.exists():
        raise ValueError(f"{run_dir} has no {artifacts.TESTSET}: re-run `fdkd validate` with this version of fdkd")
    if artifacts.sha256_file(testset) != rec["sha256"]:
        raise ValueError(f"{testset} does not match the run's manifest (tampered or truncated)")
    z = dict(np.load(testset))
    if "rows" not in z or "sha256" not in z:
        raise ValueError(f"{testset} holds no row indices and hashes (an older fdkd's, with the inputs in it): "
                         "re-run `fdkd validate` with this version of fdkd")
    x, keys, where = _testset_inputs(run_dir, manifest, z, dataset)
    rows, expected = z["rows"], z["sha256"]

    def features():
        for lo, hi in row_chunks(len(rows)):
            feats = np.ascontiguousarray(x[rows[lo:hi]], dtype=np.float32)
            got = row_sha256(feats)
            bad = np.flatnonzero((got != expected[lo:hi]).any(axis=1))
            if len(bad):
                k = lo + int(bad[0])
                name = f"row {int(rows[k])}" + (f" (key {keys[int(rows[k])]})" if keys is not None else "")
                raise ValueError(f"dataset {where}: test {name} does not hash as validated (sha256 "
                                 f"{hex_digest(got[int(bad[0])])[:16]}..., recorded {hex_digest(expected[k])[:16]}...;"
                                 f" {len(bad)} row(s) of this chunk differ): the dataset changed since `fdkd validate`")
            yield lo, hi, feats

    return manifest, z, rec, features(), tuple(x.shape[1:])


def validate_engine(run_dir: Path, plan: Path, dataset=None) -> dict:
    """Gate one engine built after the run on the run's test set (no torch); record it beside the engine.

    The test set must still hash as the run's manifest says; the gates are the run's. Its rows are re-read from the
    run's dataset (``dataset``: its path now, if it moved, or the dataset loaded) in chunks, each row's input
    checked against its recorded sha256 (a row that differs is refused, named: ``open_testset``). Returns the
    entry; raises ``ValidationFailed`` (after writing the entry) when its gate fails, ``ValueError`` for a test set
    or dataset that does not match, and ``RuntimeError`` when the engine cannot run here.
    """
    from fdkd.serving.runtime import load_runtime

    run_dir, plan = Path(run_dir), Path(plan)
    manifest, z, rec, features, shape = open_testset(run_dir, dataset)
    gates = GateConfig.model_validate(manifest["config"]["validate"]["gates"])
    v = manifest["config"]["validate"]
    y, ref, teacher_pred = z["y"], z["ref_logits"], z["teacher_pred"]
    info = json.loads(plan.with_name(plan.stem + ".build.json").read_text())
    rt = load_runtime(plan)
    logits, head = [], None
    for _, _, feats in features:
        head = feats if head is None else head
        logits.append(rt(feats))
    logits = np.concatenate(logits) if logits else np.zeros((0, ref.shape[1]), np.float32)
    entry = {"name": plan.name, "sha256": artifacts.sha256_file(plan), "precision": info["precision"],
             "target": "tensorrt engine", "required": True, "source_onnx": info.get("onnx"),
             "testset_sha256": rec["sha256"], "mode": rt.mode(), "runtime": rt.describe(),
             "metrics": compare(logits, ref, teacher_pred, y)
             | latency(rt, head if head is not None else np.zeros((1, *shape), np.float32),
                       v["latency_batch"], v["latency_repeats"]),
             "predictions": logits.argmax(1).tolist()}
    entry["gate"] = gate(entry, gates, float((ref.argmax(1) == y).mean()),
                         {"y": y, "ref_pred": ref.argmax(1), "pred": logits.argmax(1)})
    out = plan.parent / artifacts.VALIDATION
    existing = json.loads(out.read_text()) if out.exists() else {"artifacts": []}
    existing["artifacts"] = [a for a in existing.get("artifacts", []) if a.get("name") != plan.name] + [entry]
    artifacts.write_json(out, existing)
    if not entry["gate"]["passed"]:
        raise ValidationFailed(f"validation gate failed: {plan.name} {gate_text(entry['gate'])} "
                               f"in mode [{_mode_text(entry)}]")
    return entry
