"""Which engine folder the GPU container serves from, and whether it must build an engine first.

The container entrypoint (``docker/entrypoint.sh``) calls, once the probe has printed the GPU/TensorRT
key::

    python3 -m fdkd.serving.engine_volume RUN_DIR ENGINE_ROOT/KEY --precision fp16

and gets one line on stdout, ``reuse DIR`` or ``build DIR`` (the reason goes to stderr). ``DIR`` is
``ENGINE_ROOT/KEY/<sha256 of the run's source ONNX, first 16 hex>-<precision>``: a new run (another
ONNX) or another ``FDKD_PRECISION`` gets a folder of its own, so an engine for something else never
stands in for it. Inside ``DIR`` an engine is reused only when its ``.build.json`` sidecar names that
ONNX (file and sha256) and that precision, and the ``validation.json`` beside it holds an entry for the
plan's own sha256 that ran and passed its gate. Anything else (no plan, a plan whose gate failed or was
never recorded, an interrupted build) is removed from ``DIR`` and rebuilt: a plan that failed its gate
never blocks a rebuild, and the server, which picks the newest ``.plan`` in the folder, never sees it.

Exit status: 0 with the line; 2 with a message for a bad run directory or precision. No torch, no pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from fdkd.serving.signature import file_sha256

PRECISIONS = ("fp32", "fp16", "int8")


class BadInput(ValueError):
    """A run directory or precision the entrypoint cannot build from; the message names the file or field."""


@dataclass
class Decision:
    action: str  # "reuse" | "build"
    engine_dir: Path
    reason: str




def _json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def source_onnx(run_dir: Path, precision: str) -> tuple[str, str]:
    """(file name, sha256 from the manifest) of the ONNX graph ``fdkd engine --precision`` builds from."""
    if precision not in PRECISIONS:
        raise BadInput(f"FDKD_PRECISION must be one of {list(PRECISIONS)}, got {precision!r}")
    mpath = Path(run_dir) / "manifest.json"
    if not mpath.is_file():
        raise BadInput(f"{mpath} not found: FDKD_RUN_DIR is not a finished fdkd run")
    manifest = _json(mpath)
    if manifest is None or not isinstance(manifest.get("artifacts"), dict):
        raise BadInput(f"{mpath} is not a valid fdkd manifest (no artifacts table)")
    method = ((manifest.get("config") or {}).get("build") or {}).get("int8_method", "entropy")
    name = {"fp32": "student.onnx", "fp16": "student.fp16.onnx", "int8": f"student.int8.{method}.onnx"}[precision]
    rec = manifest["artifacts"].get(name)
    if not isinstance(rec, dict) or not isinstance(rec.get("sha256"), str) or len(rec["sha256"]) != 64:
        raise BadInput(f"{mpath}: no {name} with a sha256 among the artifacts, so no {precision} engine can be "
                       "built from this run")
    return name, rec["sha256"]


def engine_dir(key_dir: Path, onnx_sha256: str, precision: str) -> Path:
    return Path(key_dir) / f"{onnx_sha256[:16]}-{precision}"


def plan_problem(plan: Path, onnx: str, onnx_sha256: str, precision: str) -> str:
    """Why ``plan`` may not be reused for this ONNX and precision ("" when it may)."""
    info = _json(plan.with_name(plan.stem + ".build.json"))
    if info is None:
        return f"{plan.name} has no readable .build.json sidecar (an interrupted build?)"
    if info.get("precision") != precision:
        return f"{plan.name} is a {info.get('precision')} engine, FDKD_PRECISION is {precision}"
    if info.get("onnx") != onnx or info.get("onnx_sha256") != onnx_sha256:
        return (f"{plan.name} was built from {info.get('onnx')} {str(info.get('onnx_sha256'))[:16]}, the run's is "
                f"{onnx} {onnx_sha256[:16]}")
    validation = _json(plan.parent / "validation.json") or {}
    sha = file_sha256(plan)
    entries = [a for a in validation.get("artifacts", []) if a.get("name") == plan.name and a.get("sha256") == sha]
    if not entries:
        return f"{plan.name} has no validation entry for its sha256 {sha[:12]} (its gate never ran to the end)"
    gates = [a.get("gate") or {} for a in entries if "skipped" not in a]
    if not any(g.get("passed") for g in gates):
        return f"{plan.name} failed its validation gate" if gates else f"{plan.name} was skipped by validation"
    return ""


def decide(run_dir: Path, key_dir: Path, precision: str) -> Decision:
    """Reuse a valid engine in the run's engine folder, or clear the folder of anything else and say: build."""
    onnx, sha = source_onnx(run_dir, precision)
    d = engine_dir(key_dir, sha, precision)
    plans = sorted(d.glob("*.plan")) if d.is_dir() else []
    problems = []
    for plan in plans:
        problem = plan_problem(plan, onnx, sha, precision)
        if not problem:
            return Decision("reuse", d, f"reusing {plan.name} (built from {onnx} {sha[:16]}, gate passed)")
        problems.append(problem)
    for plan in plans:  # none is usable: out of the way of the rebuild and of the server's newest-plan pick
        plan.unlink(missing_ok=True)
        plan.with_name(plan.stem + ".build.json").unlink(missing_ok=True)
    d.mkdir(parents=True, exist_ok=True)
    why = "; ".join(problems) if problems else f"no {precision} engine for {onnx} {sha[:16]} yet"
    return Decision("build", d, why)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fdkd.serving.engine_volume", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("key_dir", type=Path, help="ENGINE_ROOT/<GPU and TensorRT key>")
    p.add_argument("--precision", default="fp16")
    args = p.parse_args(argv)
    try:
        decision = decide(args.run_dir, args.key_dir, args.precision)
    except BadInput as e:
        print(f"fdkd: {e}", file=sys.stderr)
        return 2
    print(f"fdkd: engine folder {decision.engine_dir}: {decision.action} ({decision.reason})", file=sys.stderr)
    print(f"{decision.action} {decision.engine_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
