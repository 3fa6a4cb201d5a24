"""``fdkd export triton RUN OUT``: a run's validated artifacts as a Triton model repository plus a
KServe ``InferenceService`` manifest, for when one ``fdkd serve`` box is not enough.

Writes::

    OUT/model_repository/<name>/config.pbtxt          platform onnxruntime_onnx, dynamic batching
    OUT/model_repository/<name>/1/model.onnx          the run's ONNX graph (student.onnx unless --onnx)
    OUT/model_repository/<name>/labels.txt            class names (Triton's classification extension)
    OUT/model_repository/<name>_trt_<precision>/...   one model per TensorRT plan, platform tensorrt_plan
    OUT/inferenceservice.yaml                         KServe v1beta1, modelFormat triton, protocol v2
    OUT/export.json                                   what was exported (sha256) and what was left out, why

Only artifacts whose sha256 matches the run's manifest *and* that passed their validation gate are exported: a
``validation.json`` entry for that same sha256 (a stale one validates nothing). The ONNX graph's entry must be
judged in the mode the target runs it in, checked by the function ``fdkd serve`` uses
(``fdkd.serving.validated_mode``): execution provider (``--onnx-device``), full graph optimisation (Q/DQ
fused, not the emulated reference), the INT8 kernel family (``--target-int8-kernels``, default this CPU's) and
the ONNX Runtime version (``--target-onnxruntime``, default the installed one); a mismatch is refused naming
the field and both values. ``--runtime-version`` (the Triton image tag KServe runs, e.g. ``24.12-py3``) names
that ONNX Runtime itself, from ``TRITON_ONNXRUNTIME`` (NVIDIA's release notes): the graph must have been
validated under the ONNX Runtime of that Triton release, and the refusal says how to re-validate under it; a
release the table does not know needs ``--target-onnxruntime`` from its notes, never a guess. That mode goes
into the model's config parameters (``fdkd_execution_mode``) and ``export.json``. The ONNX graph asked for is
required: if it failed or was never validated, nothing is written (exit 1) unless ``allow_unvalidated``. A
TensorRT plan that failed, was skipped by validation (built elsewhere, validated on a machine without its GPU)
or was never validated is left out, named with the reason in ``export.json`` and on the console;
``allow_unvalidated`` exports those too, and says so in the model's config parameters. A hash mismatch is
never exported. A plan runs only under the TensorRT version it was built with: the Triton release must match
(recorded in ``export.json`` and as a comment in the manifest).

OUT is written in a temporary folder beside it and renamed into place, so a failure never leaves
a half-written repository; an existing OUT is replaced only if an earlier export wrote it.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import yaml

from fdkd import artifacts
from fdkd.serving.validated_mode import CPU, Target, gate_verdict, target_mode, validated_entry

MARKER = "export.json"
REPOSITORY = "model_repository"
ISVC = "inferenceservice.yaml"
# ONNX element type (as the manifest records it) -> Triton's data type
DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "int8": "TYPE_INT8",
          "uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
PROVIDERS = {"cpu": CPU, "gpu": "CUDAExecutionProvider"}  # what Triton's onnxruntime backend runs per instance kind
INT8_KERNEL_FAMILIES = ("x86", "x86-vnni", "arm", "arm-dotprod")  # fdkd.serving.runtime.cpu_isa's names
# Triton release (the image tag's YY.MM) -> the ONNX Runtime its onnxruntime backend runs, or None where the release
# ships no ONNX Runtime backend. Only what NVIDIA states, checked 2026-12-07:
# - 24.12: "Triton Inference Server Release 24.12" release notes, contents of the container: "ONNX Runtime 1.19.2"
#   (docs.nvidia.com/deeplearning/triton-inference-server/archives/triton-inference-server-2530/.../release_notes).
# - 24.02: released without the ONNX Runtime backend (no cuDNN 9 support in ONNX Runtime yet), as its maintainers
#   answered in triton-inference-server/server#6991 and #7027; 24.01 and 24.03 have it again.
# Add a release here only from its own release notes ("The container also includes the following: ... ONNX
# Runtime X.Y.Z"); a release not listed needs --target-onnxruntime from those notes.
TRITON_ONNXRUNTIME: dict[str, str | None] = {"24.02": None, "24.12": "1.19.2"}
TRITON_TAG = re.compile(r"(\d{2}\.\d{2})(-[a-z0-9][a-z0-9-]*)?")  # 24.12-py3, 24.12-py3-igpu, 25.01-py3-min ...


def triton_onnxruntime(runtime_version: str, target_onnxruntime: str | None) -> str:
    """The ONNX Runtime version the Triton image ``runtime_version`` runs ONNX graphs with: ``TRITON_ONNXRUNTIME``'s
    for a release it lists (``target_onnxruntime`` must then agree), else ``target_onnxruntime`` as the user read it
    in that release's notes. ValueError naming the option otherwise; NotExportable for a release without the
    ONNX Runtime backend."""
    m = TRITON_TAG.fullmatch(runtime_version)
    if m is None:
        raise ValueError(f"--runtime-version must be a Triton image tag like 24.12-py3, got {runtime_version!r}")
    release = m.group(1)
    if release not in TRITON_ONNXRUNTIME:
        if target_onnxruntime is None:
            known = ", ".join(f"{r} ({v or 'none'})" for r, v in sorted(TRITON_ONNXRUNTIME.items()))
            raise ValueError(f"--runtime-version {runtime_version}: fdkd's table does not say which ONNX Runtime "
                             f"Triton {release} runs (it knows {known}); name it with --target-onnxruntime X.Y.Z "
                             "from that release's notes (\"The container also includes ... ONNX Runtime X.Y.Z\")")
        return target_onnxruntime
    shipped = TRITON_ONNXRUNTIME[release]
    if shipped is None:
        raise NotExportable(f"Triton {runtime_version} ships no ONNX Runtime backend (NVIDIA left it out of "
                            f"{release}): it cannot serve the ONNX graph; choose another release")
    if target_onnxruntime is not None and target_onnxruntime != shipped:
        raise ValueError(f"--target-onnxruntime {target_onnxruntime} contradicts --runtime-version "
                         f"{runtime_version}: Triton {release} runs ONNX Runtime {shipped}")
    return shipped


class NotExportable(RuntimeError):
    """The run cannot be exported as asked; the message says why."""


def _q(s: str) -> str:
    """A protobuf text-format string literal (quotes, backslashes, control and non-ASCII bytes escaped)."""
    out = []
    for b in s.encode():
        c = chr(b)
        if c in '"\\':
            out.append("\\" + c)
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _tensor(t: dict, extra: str = "") -> str:
    dims = ", ".join(str(d) if isinstance(d, int) else "-1" for d in t["shape"][1:])  # without the batch axis
    if t["dtype"] not in DTYPES:
        raise NotExportable(f"tensor {t['name']!r} has type {t['dtype']}, which Triton's table here does not map")
    return (f"  {{\n    name: {_q(t['name'])}\n    data_type: {DTYPES[t['dtype']]}\n    dims: [ {dims} ]\n"
            f"{extra}  }}")


def config_pbtxt(name: str, platform: str, io: dict, max_batch: int, queue_delay_us: int, kind: str,
                 params: dict[str, str], header: str) -> str:
    """Triton's ``config.pbtxt`` (protobuf text format of ``inference.ModelConfig``)."""
    inputs = ",\n".join(_tensor(t) for t in io["inputs"])
    outputs = ",\n".join(_tensor(t, '    label_filename: "labels.txt"\n' if i == 0 else "")
                         for i, t in enumerate(io["outputs"]))
    parameters = "".join(f"parameters {{\n  key: {_q(k)}\n  value {{ string_value: {_q(v)} }}\n}}\n"
                         for k, v in params.items())
    return (f"{header}"
            f"name: {_q(name)}\nplatform: {_q(platform)}\nmax_batch_size: {max_batch}\n"
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
            f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]\n"
            f"{parameters}")


def _gate(validation: dict, name: str, sha: str) -> tuple[bool, str]:
    """(passed, what validation said) for one TensorRT plan: an entry for this very file (same sha256) that ran
    and passed. (The ONNX graph goes through ``fdkd.serving.validated_mode``, the server's own check.)"""
    named = [a for a in validation.get("artifacts", []) if a.get("name") == name]
    if not named:
        return False, "not validated (no entry in validation.json; run `fdkd validate`)"
    same = [a for a in named if a.get("sha256") == sha]
    if not same:
        judged = ", ".join(sorted({str(a.get("sha256", "none"))[:12] for a in named}))
        return False, (f"not validated: validation.json is stale (it judged sha256 {judged}, the file is {sha[:12]}; "
                       "run `fdkd validate`)")
    ran = [a for a in same if "skipped" not in a]
    if not ran:
        return False, f"not validated: validation skipped it ({same[0]['skipped']})"
    served = [a for a in ran if (a.get("mode") or {}).get("graph_optimization", "all") == "all"]
    if not served:
        return False, "not validated in the mode Triton runs it (only with Q/DQ emulated; Triton fuses them)"
    g = served[0].get("gate")
    if g is None:
        return False, "not validated (no gate in validation.json)"
    limit = "none" if g["limit"] is None else f"{g['limit']:g}"
    value = g["value"] if isinstance(g["value"], str) else f"{g['value']:.4g}"
    if not g["passed"]:
        return False, f"failed its validation gate ({g['metric']}={value}, limit {limit})"
    return True, f"passed ({g['metric']}={value}, limit {limit})"


def _revalidate_hint(runtime_version: str, target_ort: str, validated_ort: str | None) -> str:
    """How to get a graph validated under the ONNX Runtime of the Triton release it is exported for."""
    same = sorted(r for r, v in TRITON_ONNXRUNTIME.items() if v is not None and v == validated_ort)
    other = f", or export for a Triton release that runs {validated_ort} ({', '.join(same)})" if same else ""
    return (f"Triton {runtime_version} runs ONNX Runtime {target_ort}: re-validate under it (pip install "
            f"'onnxruntime=={target_ort}' in the run's environment, then `fdkd validate` with the run's config: its "
            f"entries then record ort_version {target_ort}){other}")


def _model_name(s: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", s).strip("._-")
    return name or "student"


def _isvc_name(s: str) -> str:
    """Kubernetes DNS-1123 label as KServe wants it: lowercase letters, digits, '-', starting with a letter."""
    name = re.sub(r"[^a-z0-9-]+", "-", s.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = "fdkd-" + name
    return name[:45].rstrip("-")  # KServe appends suffixes to the service's own names


def _checked_copy(src: Path, dst: Path, sha: str) -> None:
    found = artifacts.sha256_file(src)
    if found != sha:
        raise NotExportable(f"{src.name}: sha256 mismatch with the manifest (tampered or truncated: manifest "
                            f"{sha[:12]}, file {found[:12]}); never exported")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if artifacts.sha256_file(dst) != sha:
        raise NotExportable(f"copy of {src.name} to {dst} does not hash like the original")


def _read(path: Path) -> dict:
    from fdkd.serving.model import NotServable, read_run_json

    try:
        return read_run_json(path)
    except NotServable as e:
        raise NotExportable(str(e)) from None


def _write_model(repo: Path, model: str, platform: str, src: Path, filename: str, sha: str, io: dict, max_batch: int,
                 queue_delay_us: int, kind: str, class_names: list[str], params: dict[str, str], header: str) -> None:
    d = repo / model
    _checked_copy(src, d / "1" / filename, sha)
    (d / "labels.txt").write_text("".join(f"{c}\n" for c in class_names))
    (d / "config.pbtxt").write_text(config_pbtxt(model, platform, io, max_batch, queue_delay_us, kind, params, header))


def inference_service(name: str, storage_uri: str, runtime_version: str | None, gpu: bool,
                      models: list[str], comments: list[str]) -> str:
    """A KServe v1beta1 ``InferenceService`` for the repository (Triton runtime, V2 protocol)."""
    model: dict = {"modelFormat": {"name": "triton"}, "protocolVersion": "v2", "storageUri": storage_uri}
    if runtime_version:
        model["runtimeVersion"] = runtime_version
    limits = {"cpu": "1", "memory": "2Gi"} | ({"nvidia.com/gpu": "1"} if gpu else {})
    model["resources"] = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": limits}
    doc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
           "metadata": {"name": name, "annotations": {"fdkd/models": ",".join(models)}},
           "spec": {"predictor": {"model": model}}}
    head = "".join(f"# {c}\n" for c in comments)
    return head + yaml.safe_dump(doc, sort_keys=False)


def export_triton(run_dir: Path, out: Path, *, onnx: str = artifacts.ONNX_FP32, max_batch: int = 64,
                  max_queue_delay_ms: float = 0.0, onnx_device: str = "cpu", storage_uri: str | None = None,
                  runtime_version: str | None = None, name: str | None = None,
                  allow_unvalidated: bool = False, target_int8_kernels: str | None = None,
                  target_onnxruntime: str | None = None) -> dict:
    """Write OUT (see the module docstring); returns what ``export.json`` holds.

    The ONNX graph's target is Triton's onnxruntime backend on ``onnx_device`` (CPU or CUDA execution
    provider, full graph optimisation), with ``target_int8_kernels`` (default: this CPU's family) and ONNX
    Runtime ``target_onnxruntime`` (default: the installed version): its validation entry must match that mode
    exactly as ``fdkd serve`` checks its own (``fdkd.serving.validated_mode``)."""
    if target_int8_kernels is not None and target_int8_kernels not in INT8_KERNEL_FAMILIES:
        raise ValueError(f"--target-int8-kernels must be one of {list(INT8_KERNEL_FAMILIES)}, "
                         f"got {target_int8_kernels!r}")
    if target_onnxruntime is not None and not re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", target_onnxruntime):
        raise ValueError(f"--target-onnxruntime must be a version like 1.20.1, got {target_onnxruntime!r}")
    explicit_ort = target_onnxruntime is not None
    if runtime_version is not None:  # the Triton release names its ONNX Runtime: the graph must be validated under it
        target_onnxruntime = triton_onnxruntime(runtime_version, target_onnxruntime)
    run_dir, out = Path(run_dir), Path(out)
    if max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
    if max_queue_delay_ms < 0:
        raise ValueError(f"--max-queue-delay-ms must be >= 0, got {max_queue_delay_ms}")
    if onnx_device not in KINDS:
        raise ValueError(f"--onnx-device must be one of {sorted(KINDS)}, got {onnx_device!r}")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise ValueError(f"{out} exists and was not written by `fdkd export triton`; choose a new folder")
    manifest = _read(run_dir / "manifest.json")
    validation = _read(run_dir / artifacts.VALIDATION)
    arts = manifest["artifacts"]
    if onnx not in arts or not onnx.endswith(".onnx"):
        onnxes = sorted(n for n in arts if n.endswith(".onnx"))
        raise ValueError(f"--onnx {onnx!r} is not an ONNX graph of {run_dir}; choose one of {onnxes}")
    base = _model_name(name or manifest.get("name", "student"))
    class_names = list(manifest["class_names"])
    delay_us = int(round(1000 * max_queue_delay_ms))
    header = f"# written by `fdkd export triton` from run {manifest.get('name')!r}\n"
    exported, left_out, warnings = [], [], []

    def provenance(art: str, verdict: str) -> dict[str, str]:
        return {"fdkd_artifact": art, "fdkd_sha256": arts[art]["sha256"], "fdkd_validation": verdict}

    # the same check as `fdkd serve` (fdkd.serving.validated_mode), against the target's mode instead of this server's
    named = tuple(k for k, v in (("provider", onnx_device != "cpu"), ("int8_kernels", target_int8_kernels),
                                 ("ort_version", explicit_ort)) if v)
    where = f"the export target (Triton {runtime_version})" if runtime_version else "the export target"
    target = Target(provider=PROVIDERS[onnx_device], int8_kernels=target_int8_kernels, ort_version=target_onnxruntime,
                    where=where, named=named)
    entry, problem = validated_entry(validation, onnx, arts[onnx]["sha256"], ".onnx", target)
    entries = [a for a in validation.get("artifacts", []) if a.get("name") == onnx and "mode" in a]
    mode = target_mode((entry or (entries[0] if entries else {})).get("mode", {}), ".onnx", target)
    if problem and runtime_version and (entry or entries) and mode.get("ort_version") != (
            (entry or entries[0]).get("mode", {}).get("ort_version")):
        problem += "; " + _revalidate_hint(runtime_version, mode["ort_version"],
                                           (entry or entries[0]).get("mode", {}).get("ort_version"))
    if problem:
        if not allow_unvalidated:
            raise NotExportable(f"{problem}; nothing exported (--allow-unvalidated exports it anyway, or validate "
                                "on the target)")
        warnings.append(f"{problem}; exported anyway because --allow-unvalidated was given")
        verdict = "UNVALIDATED, exported with --allow-unvalidated: " + problem
    else:
        verdict = f"passed ({gate_verdict(entry['gate'])})"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        repo = tmp / REPOSITORY
        params = provenance(onnx, verdict) | {"fdkd_execution_mode": json.dumps(mode, sort_keys=True),
                                              "fdkd_validated": "false" if problem else "true"}
        _write_model(repo, base, "onnxruntime_onnx", run_dir / onnx, "model.onnx", arts[onnx]["sha256"],
                     arts[onnx]["onnx"], max_batch, delay_us, KINDS[onnx_device], class_names, params, header)
        exported.append({"model": base, "platform": "onnxruntime_onnx", "artifact": onnx, "max_batch_size": max_batch,
                         "kind": KINDS[onnx_device], "sha256": arts[onnx]["sha256"], "validation": verdict,
                         "validated": not problem, "mode": mode})
        trt_versions = set()
        for plan in sorted(n for n in arts if n.endswith(".plan")):
            reason = None
            info_path = run_dir / (Path(plan).stem + ".build.json")
            info = json.loads(info_path.read_text()) if info_path.exists() else None
            passed, verdict = _gate(validation, plan, arts[plan]["sha256"])
            if not (run_dir / plan).exists():
                reason = "file missing from the run directory"
            elif info is None:
                reason = f"no {info_path.name} sidecar (TensorRT version and batch profile unknown)"
            elif info.get("onnx") not in arts:
                reason = f"built from {info.get('onnx')!r}, which is not in the manifest"
            elif info.get("profile", {}).get("min", 1) != 1:
                reason = f"batch profile starts at {info['profile']['min']}; Triton's batching needs batch 1"
            elif not passed and not allow_unvalidated:
                reason = verdict
            if reason:
                left_out.append({"artifact": plan, "reason": reason})
                continue
            if not passed:
                warnings.append(f"{plan} {verdict}; exported anyway because --allow-unvalidated was given")
                verdict = "UNVALIDATED, exported with --allow-unvalidated: " + verdict
            model = f"{base}_trt_{info.get('precision', 'unknown')}"
            if any(e["model"] == model for e in exported):
                model += "_" + _model_name(Path(plan).stem.split(".")[2] if plan.count(".") >= 3 else plan)
            src_io = arts[info["onnx"]]["onnx"]
            mb = int(info["profile"]["max"])
            params = provenance(plan, verdict) | {"fdkd_tensorrt": str(info.get("tensorrt")),
                                                  "fdkd_gpu": str(info.get("gpu"))}
            _write_model(repo, model, "tensorrt_plan", run_dir / plan, "model.plan", arts[plan]["sha256"], src_io,
                         mb, delay_us, "KIND_GPU", class_names, params, header)
            trt_versions.add(str(info.get("tensorrt")))
            exported.append({"model": model, "platform": "tensorrt_plan", "artifact": plan, "max_batch_size": mb,
                             "kind": "KIND_GPU", "sha256": arts[plan]["sha256"], "validation": verdict,
                             "tensorrt": info.get("tensorrt"), "gpu": info.get("gpu")})
        models = [e["model"] for e in exported]
        uri = storage_uri or f"pvc://fdkd-models/{base}"
        comments = [f"written by `fdkd export triton` from run {manifest.get('name')!r}: models {', '.join(models)}",
                    f"copy {REPOSITORY}/ to {uri} first (or rerun with --storage-uri)"]
        if runtime_version:
            comments.append(f"runtimeVersion {runtime_version}: Triton with ONNX Runtime {target_onnxruntime}, the "
                            "version the ONNX graph was validated under")
        if trt_versions:
            comments.append(f"the TensorRT plans need a Triton release with TensorRT {', '.join(sorted(trt_versions))} "
                            "(set runtimeVersion to its tag) and the GPU they were built on")
        gpu = bool(trt_versions) or onnx_device == "gpu"
        (tmp / ISVC).write_text(inference_service(_isvc_name(base), uri, runtime_version, gpu, models, comments))
        summary = {"run": str(run_dir), "run_name": manifest.get("name"), "repository": REPOSITORY,
                   "inference_service": ISVC, "storage_uri": uri, "models": exported, "left_out": left_out,
                   "warnings": warnings}
        if runtime_version:
            summary["triton"] = {"runtime_version": runtime_version, "onnxruntime": target_onnxruntime,
                                 "onnxruntime_from": "--target-onnxruntime" if explicit_ort else "fdkd's table of "
                                 "Triton releases (NVIDIA's release notes)"}
        artifacts.write_json(tmp / MARKER, summary)
        if out.exists():  # an earlier export: moved aside, replaced, then removed
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / "x")
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
