"""Load the model a run directory ships: manifest, hash, validation-mode and gate checks, runtime.

``serving`` reads ``manifest.json`` and ``validation.json`` itself (no ``pipeline`` import). A
model is *servable* only when one chain of hashes holds from gate to server:

- an ``.onnx`` artifact's sha256 matches the manifest (an engine's ``.plan`` is hashed the same way,
  against its own validation entry: engines are gated on their own entry, never through their
  source ONNX);
- ``validation.json`` has an entry for that file **with that sha256** (a standalone ``fdkd quantize``
  or ``fdkd export`` after validation leaves the old entry stale: refused);
- that entry was judged in the **execution mode** the server will run (ONNX Runtime: provider,
  full graph optimisation, so Q/DQ *fused*, the CPU's INT8 kernel family, threads and the ONNX
  Runtime version; the one check ``fdkd.serving.validated_mode``, shared with ``fdkd export triton``; TensorRT:
  version and GPU): an INT8 graph validated only with Q/DQ emulated is refused, since the server
  would run it fused, and so is one validated fused on a CPU of another INT8 kernel family (x86
  without VNNI saturates where VNNI does not: ``fdkd.serving.runtime.cpu_isa``). The server
  loads the artifact in exactly that mode (with ``threads`` unset it takes the validated count) and
  checks the runtime reports the same mode once loaded;
- that entry's gate passed.

With ``trust`` (a PEM Ed25519 public key: ``fdkd serve --trust``, ``FDKD_TRUST``) the run must also carry a
``signature.json`` by that key over its current ``manifest.json`` and ``validation.json``
(``fdkd.serving.signature``): an unsigned run, one signed by another key, or one whose manifest or
validation.json changed after signing is refused before anything else is read.

``allow_unvalidated`` overrides the validation checks (with a warning), never the manifest hash nor
the signature.
Every refusal raises ``NotServable`` with the reason, which ``/v2/health/ready`` then reports.

``artifact="auto"`` on the CPU (no engine) serves ``student.onnx`` unless an INT8 graph of the run
is faster *and* servable here: its file matches the manifest, an entry with its sha256 passed its
gate (for INT8 fused on the CPU that gate is the CPU bar ``validate.gates.int8_cpu_max_acc_drop_pt``, 0.5 points,
and a graph whose INT8 gate search found nothing is failed whatever it scored) in the mode this server would run it
in (Q/DQ fused, **this CPU's INT8 kernel family**, the same threads), and that entry's validation throughput is at
least ``INT8_MIN_SPEEDUP`` times ``student.onnx``'s at the same batch (``cpu_choice``). The FP32 graph must itself
be servable first: its refusal is the run's refusal (a failed FP32 gate or a stale validation says something is
wrong with the export every other graph comes from). So one run directory copied between an AVX2
machine and a VNNI one serves FP32 on the first and, where INT8 was validated on that family and
measured faster, INT8 on the second.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fdkd.serving.preprocess import frontend_from_dict
from fdkd.serving.runtime import load_runtime
from fdkd.serving.signature import file_sha256
from fdkd.serving.validated_mode import Target, target_mode, validated_entry
from fdkd.serving.validated_mode import mode_text as _mode_text

AUTO_CPU = "student.onnx"  # the CPU default: exact, and the source of every other graph
AUTO_CPU_INT8 = ("student.int8cpu.onnx", "student.int8.*.onnx")  # replace it only when validated here and faster
# an INT8 graph replaces the exact FP32 one only for a real gain: validation times 5 calls per graph, and on a
# shared machine two equally fast graphs can differ by a few per cent there
INT8_MIN_SPEEDUP = 1.2


class NotServable(RuntimeError):
    """The run directory's artifact may not be served; the message says why."""


def sha256(path: Path) -> str:
    return file_sha256(path)


@dataclass
class LoadedModel:
    name: str
    version: str
    artifact: str
    platform: str
    runtime: object
    input_name: str
    input_shape: list[int]  # without the batch axis
    output_name: str
    class_names: list[str]
    frontend: object
    modality: str
    warnings: list[str] = field(default_factory=list)
    sha256: str = ""
    mode: dict = field(default_factory=dict)  # the execution mode it runs in (= the validated one)
    validated: bool = True  # False: served without a passed validation in this mode (--allow-unvalidated)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def warm_up(self, max_batch: int) -> float:
        t0 = time.perf_counter()
        for b in sorted({1, max_batch}):
            self.runtime(np.zeros((b, *self.input_shape), np.float32))
        return time.perf_counter() - t0


def read_run_json(path: Path, what: str = "", signed: dict | None = None) -> dict:
    """A run directory's JSON file (manifest.json, validation.json) parsed, or :class:`NotServable` naming the
    file; with ``signed`` (file name -> signed sha256) the bytes parsed must be the signed ones. The one reader of
    a run directory's records for the server and ``fdkd export triton``."""
    if not path.exists():
        raise NotServable(f"{path.parent} has no {path.name}: not a finished fdkd run" + (f" ({what})" if what else ""))
    data = path.read_bytes()
    if signed is not None and hashlib.sha256(data).hexdigest() != signed.get(path.name):
        raise NotServable(f"not trusted: {path.name} changed after its signature was checked")
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise NotServable(f"{path} is not valid JSON: {e}") from None


def _pick(run_dir: Path, manifest: dict, artifact: str, engine_dir: Path | None, threads: int | None) -> Path:
    if artifact != "auto":  # a name inside the run directory, else a path (an engine elsewhere)
        p = Path(artifact)
        return run_dir / p if (run_dir / p).exists() else p
    if engine_dir is not None:  # engines built on first start in the container, newest first
        plans = sorted(Path(engine_dir).glob("*.plan"), key=lambda p: p.stat().st_mtime, reverse=True)
        if plans:
            return plans[0]
    if AUTO_CPU not in manifest["artifacts"]:
        raise NotServable(f"no servable artifact in {run_dir}")
    return run_dir / cpu_choice(run_dir, manifest, threads)["artifact"]


def _validations(run_dir: Path, path: Path, signed: dict | None = None) -> dict:
    """validation.json of the run, plus (for an engine outside the run) the one beside the engine."""
    validation = read_run_json(run_dir / "validation.json", "validation", signed)
    beside = path.parent / "validation.json"
    if path.suffix == ".plan" and beside.exists() and beside.resolve() != (run_dir / "validation.json").resolve():
        extra = read_run_json(beside, "engine validation")
        validation = validation | {"artifacts": validation.get("artifacts", []) + extra.get("artifacts", [])}
    return validation


def _rows_per_s(entry: dict) -> tuple[int | None, float | None]:
    m = entry.get("metrics", {})
    return m.get("batch"), m.get("rows_per_s")


def cpu_choice(run_dir: Path, manifest: dict, threads: int | None = None) -> dict:
    """Which ONNX graph ``artifact="auto"`` serves on this CPU, and every candidate's standing.

    ``{"artifact": name, "candidates": [{"name", "rows_per_s", "batch", "servable", "why"}]}``. The
    FP32 graph is the answer unless it is servable here and an INT8 graph (``AUTO_CPU_INT8``) is too,
    with a validated throughput at least ``INT8_MIN_SPEEDUP`` x FP32's at the same batch; the
    fastest such INT8 graph wins. Nothing here loads a runtime: ``load_model`` then checks the pick
    as it checks any artifact.
    """
    out = {"artifact": AUTO_CPU, "candidates": []}
    try:
        validation = json.loads((run_dir / "validation.json").read_text())
    except (OSError, json.JSONDecodeError):
        return out  # load_model names the problem
    names = [AUTO_CPU] + sorted({n for pat in AUTO_CPU_INT8 for n in (p.name for p in run_dir.glob(pat))
                                 if n in manifest["artifacts"]})
    for name in names:
        path = run_dir / name
        cand = {"name": name, "rows_per_s": None, "batch": None, "servable": False, "why": ""}
        out["candidates"].append(cand)
        if not path.exists() or name not in manifest["artifacts"]:
            cand["why"] = "missing"
            continue
        sha = sha256(path)
        if sha != manifest["artifacts"][name]["sha256"]:
            cand["why"] = "sha256 mismatch with the manifest"
            continue
        entry, problem = validated_entry(validation, name, sha, ".onnx", Target(threads=threads))
        cand["batch"], cand["rows_per_s"] = _rows_per_s(entry)
        cand["servable"], cand["why"] = not problem, problem
    fp32 = out["candidates"][0]
    if not fp32["servable"] or not fp32["rows_per_s"]:
        return out  # the FP32 graph's own refusal (or its missing timing) decides; load_model reports it
    best = fp32["rows_per_s"] * INT8_MIN_SPEEDUP
    for cand in out["candidates"][1:]:
        if not cand["servable"]:
            continue
        if cand["batch"] != fp32["batch"] or not cand["rows_per_s"]:
            cand["why"] = f"timed at batch {cand['batch']}, FP32 at {fp32['batch']}: not comparable"
            continue
        if cand["rows_per_s"] >= best:
            out["artifact"], best = cand["name"], cand["rows_per_s"]
        else:
            cand["why"] = (f"validated {cand['rows_per_s']:.0f} rows/s < {INT8_MIN_SPEEDUP:g} x FP32's "
                           f"{fp32['rows_per_s']:.0f}")
    return out


def load_model(run_dir: Path, artifact: str = "auto", *, engine_dir: Path | None = None, model_name: str | None = None,
               allow_unvalidated: bool = False, threads: int | None = None, trust: Path | None = None) -> LoadedModel:
    run_dir = Path(run_dir)
    signed = None  # under trust: the signed sha256 of manifest.json and validation.json, checked again as read
    if trust is not None:
        from fdkd.serving.signature import BadKey, UntrustedRun, verify_run

        try:
            signed = verify_run(run_dir, Path(trust))["files"]
        except (UntrustedRun, BadKey) as e:
            raise NotServable(f"not trusted: {e}") from None
    manifest = read_run_json(run_dir / "manifest.json", "manifest", signed)
    path = _pick(run_dir, manifest, artifact, engine_dir, threads)
    if not path.exists():
        raise NotServable(f"artifact {path} does not exist")
    warnings: list[str] = []
    found = sha256(path)
    if path.suffix == ".plan":  # built after the run: it must come from this run's ONNX and be gated itself
        info = read_run_json(path.with_name(path.stem + ".build.json"), "engine sidecar")
        src = manifest["artifacts"].get(info.get("onnx", ""))
        if src is None or src["sha256"] != info.get("onnx_sha256"):
            raise NotServable(f"engine {path.name} was not built from this run's {info.get('onnx')}")
        rec = manifest["artifacts"].get(path.name)  # built by the run's build stage: in the manifest too
        if rec is not None and (run_dir / rec["path"]).resolve() == path.resolve() and found != rec["sha256"]:
            raise NotServable(f"{path.name}: sha256 mismatch with the manifest (tampered or truncated: "
                              f"manifest {rec['sha256'][:12]}, file {found[:12]})")
        io_name = info["onnx"]
    else:
        rec = manifest["artifacts"].get(path.name)
        if rec is None:
            raise NotServable(f"{path.name} is not in {run_dir}/manifest.json")
        if found != rec["sha256"]:
            raise NotServable(f"{path.name}: sha256 mismatch with the manifest (tampered or truncated: "
                              f"manifest {rec['sha256'][:12]}, file {found[:12]})")
        io_name = path.name
    target = Target(threads=threads)  # this server: this CPU's INT8 kernels, the installed ONNX Runtime
    entry, problem = validated_entry(_validations(run_dir, path, signed), path.name, found, path.suffix, target)
    if problem:
        if not allow_unvalidated:
            raise NotServable(problem + "; --allow-unvalidated overrides")
        warnings.append(problem + "; serving anyway because --allow-unvalidated was given")
    mode = entry.get("mode") or {}
    opts = {}
    if path.suffix == ".onnx":
        opts = {"threads": threads if threads is not None else mode.get("threads")}
    try:
        runtime = load_runtime(path, **opts)
    except Exception as e:  # a corrupt file, a wrong GPU, a missing library: not servable, and why
        raise NotServable(f"cannot load {path.name}: {e}") from None
    if entry:
        got = runtime.mode()
        want = target_mode(mode, path.suffix, target)
        if got != want or (path.suffix == ".plan" and got != mode):
            problem = (f"{path.name} loads here in mode [{_mode_text(got)}], but was validated in "
                       f"[{_mode_text(mode)}]")
            if not allow_unvalidated:
                raise NotServable(problem + "; --allow-unvalidated overrides")
            warnings.append(problem + "; serving anyway because --allow-unvalidated was given")
    rec = manifest["artifacts"].get(io_name, {})
    io = rec.get("onnx", {})
    inp = io.get("inputs", [{}])[0]
    shape = [int(d) for d in inp.get("shape", [])[1:]]
    return LoadedModel(
        name=model_name or manifest.get("name", "student"), version="1", artifact=path.name,
        platform="tensorrt_plan" if path.suffix == ".plan" else "onnxruntime_onnx", runtime=runtime,
        input_name=inp.get("name", "input"), input_shape=shape,
        output_name=io.get("outputs", [{}])[0].get("name", "logits"), class_names=list(manifest["class_names"]),
        frontend=frontend_from_dict(manifest["preprocessing"]), modality=manifest.get("student_modality", "audio"),
        warnings=warnings, sha256=found, mode=runtime.mode(), validated=not warnings)
