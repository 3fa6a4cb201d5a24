"""``manifest.json``: what every artifact of a run directory is, where it came from, and its hash.

Per artifact: path, sha256, size, producing stage, the hashes of the inputs it was made from,
and for ONNX graphs the input/output names, shapes and dtypes. At the top: library versions,
class names, the student's preprocessing constants and the resolved config. Per stage: the key
(hash of its config section and input hashes) and its outputs, so ``fdkd run`` can skip a stage
whose inputs and outputs still match. Written atomically after every stage.
"""

from __future__ import annotations

import contextlib
import json
import platform
from pathlib import Path

from fdkd import artifacts

FORMAT = "fdkd-run"
VERSION = 1


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("fdkd", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "tensorrt"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def onnx_io(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}

    def spec(v):
        t = v.type.tensor_type
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim]}

    return {"inputs": [spec(v) for v in model.graph.input if v.name not in inits],
            "outputs": [spec(v) for v in model.graph.output], "opset": model.opset_import[0].version,
            "metadata": {p.key: p.value for p in model.metadata_props}}


class RunManifest:
    def __init__(self, run_dir: Path, data: dict | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.data = data or {"format": FORMAT, "version": VERSION, "artifacts": {}, "stages": {}}

    @classmethod
    def load(cls, run_dir: Path) -> RunManifest:
        path = Path(run_dir) / artifacts.MANIFEST
        if not path.exists():
            return cls(run_dir)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it to start the run afresh") from None
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not an fdkd run manifest")
        return cls(run_dir, data)

    def save(self) -> None:
        artifacts.write_json(self.run_dir / artifacts.MANIFEST, self.data)

    def path_of(self, name: str) -> Path:
        rec = self.data["artifacts"][name]
        p = Path(rec["path"])
        return p if p.is_absolute() else self.run_dir / p

    def sha(self, name: str) -> str:
        return self.data["artifacts"][name]["sha256"]

    def record(self, name: str, path: Path, stage: str, inputs: list[str], **extra) -> None:
        path = Path(path)
        try:
            stored = str(path.relative_to(self.run_dir))
        except ValueError:
            stored = str(path.resolve())
        rec = {"path": stored, "sha256": artifacts.sha256_file(path), "bytes": path.stat().st_size, "stage": stage,
               "inputs": {i: self.sha(i) for i in inputs}, **extra}
        if path.suffix == ".onnx":
            rec["onnx"] = onnx_io(path)
        self.data["artifacts"][name] = rec

    def problems(self, names: list[str] | None = None) -> list[str]:
        """Artifacts whose file is missing or whose sha256 no longer matches, each named."""
        out = []
        for name in names if names is not None else list(self.data["artifacts"]):
            rec = self.data["artifacts"].get(name)
            if rec is None:
                out.append(f"{name}: not in the manifest")
                continue
            path = self.path_of(name)
            if not path.exists():
                out.append(f"{name}: missing ({path})")
                continue
            found = artifacts.sha256_file(path)
            if found != rec["sha256"]:
                out.append(f"{name}: sha256 mismatch, tampered or truncated "
                           f"(manifest {rec['sha256'][:12]}, file {found[:12]}, {path.stat().st_size} bytes)")
        return out

    def stage_current(self, stage: str, key: str) -> tuple[bool, list[str]]:
        """Is the recorded stage done with this key and are its outputs intact? (and the problems found)"""
        rec = self.data["stages"].get(stage)
        if rec is None or rec.get("key") != key or rec.get("status") not in ("done", "skipped"):
            return False, []
        problems = self.problems(rec["outputs"])
        return not problems, problems
