"""Load the model a run directory ships: manifest, hash and gate checks, artifact choice, runtime.

``serving`` reads ``manifest.json`` and ``validation.json`` itself (no ``pipeline`` import). A
model is *servable* only when its artifact's sha256 matches the manifest and its validation
gate passed (``allow_unvalidated`` overrides the gate, never the hash). Every refusal raises
``NotServable`` with the reason, which ``/v2/health/ready`` then reports.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from serving.preprocess import frontend_from_dict
from serving.runtime import load_runtime

AUTO_CPU = ("student.onnx",)  # on CPU the FP32 graph: exact, and as fast as INT8 on non-VNNI x86


class NotServable(RuntimeError):
    """The run directory's artifact may not be served; the message says why."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def warm_up(self, max_batch: int) -> float:
        t0 = time.perf_counter()
        for b in sorted({1, max_batch}):
            self.runtime(np.zeros((b, *self.input_shape), np.float32))
        return time.perf_counter() - t0


def _read_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise NotServable(f"{path.parent} has no {path.name}: not a finished fdkd run ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise NotServable(f"{path} is not valid JSON: {e}") from None


def _pick(run_dir: Path, manifest: dict, artifact: str, engine_dir: Path | None) -> Path:
    if artifact != "auto":  # a name inside the run directory, else a path (an engine elsewhere)
        p = Path(artifact)
        return run_dir / p if (run_dir / p).exists() else p
    if engine_dir is not None:  # engines built on first start in the container, newest first
        plans = sorted(Path(engine_dir).glob("*.plan"), key=lambda p: p.stat().st_mtime, reverse=True)
        if plans:
            return plans[0]
    for name in AUTO_CPU:
        if name in manifest["artifacts"]:
            return run_dir / name
    raise NotServable(f"no servable artifact in {run_dir}")


def _check_gate(validation: dict, name: str, allow_unvalidated: bool, warnings: list[str]) -> None:
    entry = next((a for a in validation.get("artifacts", []) if a.get("name") == name), None)
    problem = None
    if entry is None:
        problem = f"{name} was not validated"
    elif "gate" in entry and not entry["gate"]["passed"]:
        g = entry["gate"]
        problem = f"{name} failed its validation gate ({g['metric']}={g['value']:.4g}, limit {g['limit']})"
    if problem:
        if not allow_unvalidated:
            raise NotServable(problem + "; --allow-unvalidated overrides")
        warnings.append(problem + "; serving anyway because --allow-unvalidated was given")


def load_model(run_dir: Path, artifact: str = "auto", *, engine_dir: Path | None = None, model_name: str | None = None,
               allow_unvalidated: bool = False, threads: int | None = None) -> LoadedModel:
    run_dir = Path(run_dir)
    manifest = _read_json(run_dir / "manifest.json", "manifest")
    path = _pick(run_dir, manifest, artifact, engine_dir)
    if not path.exists():
        raise NotServable(f"artifact {path} does not exist")
    warnings: list[str] = []
    if path.suffix == ".plan":  # built after the run: trust comes from the ONNX it was built from
        info = _read_json(path.with_name(path.stem + ".build.json"), "engine sidecar")
        src = manifest["artifacts"].get(info.get("onnx", ""))
        if src is None or src["sha256"] != info.get("onnx_sha256"):
            raise NotServable(f"engine {path.name} was not built from this run's {info.get('onnx')}")
        gate_name = info["onnx"]
    else:
        rec = manifest["artifacts"].get(path.name)
        if rec is None:
            raise NotServable(f"{path.name} is not in {run_dir}/manifest.json")
        found = sha256(path)
        if found != rec["sha256"]:
            raise NotServable(f"{path.name}: sha256 mismatch with the manifest (tampered or truncated: "
                              f"manifest {rec['sha256'][:12]}, file {found[:12]})")
        gate_name = path.name
    _check_gate(_read_json(run_dir / "validation.json", "validation"), gate_name, allow_unvalidated, warnings)
    opts = {"threads": threads} if path.suffix == ".onnx" else {}
    try:
        runtime = load_runtime(path, **opts)
    except Exception as e:  # a corrupt file, a wrong GPU, a missing library: not servable, and why
        raise NotServable(f"cannot load {path.name}: {e}") from None
    rec = manifest["artifacts"].get(gate_name, {})
    io = rec.get("onnx", {})
    inp = io.get("inputs", [{}])[0]
    shape = [int(d) for d in inp.get("shape", [])[1:]]
    return LoadedModel(
        name=model_name or manifest.get("name", "student"), version="1", artifact=path.name,
        platform="tensorrt_plan" if path.suffix == ".plan" else "onnxruntime_onnx", runtime=runtime,
        input_name=inp.get("name", "input"), input_shape=shape,
        output_name=io.get("outputs", [{}])[0].get("name", "logits"), class_names=list(manifest["class_names"]),
        frontend=frontend_from_dict(manifest["preprocessing"]), modality=manifest.get("student_modality", "audio"),
        warnings=warnings)
