"""``fdkd export triton RUN OUT`` on a real tiny run: the repository's configs load with Triton's own
protobuf schema (tritonclient's ``model_config_pb2``), the graph is the run's (same sha256, same
I/O as the ONNX file declares), the KServe manifest points at it, and only validated artifacts go.
"""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from fdkd import artifacts
from fdkd.pipeline.cli import app
from fdkd.pipeline.triton_repo import _q

runner = CliRunner()


def _config(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _export(*args):
    return runner.invoke(app, ["export", "triton", *map(str, args)])


@pytest.fixture
def run_copy(served_run, tmp_path):
    """A copy of the tiny run that a test may edit."""
    dst = tmp_path / "run"
    shutil.copytree(served_run, dst)
    return dst


def test_export_writes_a_repository_that_triton_and_kserve_read(served_run, tmp_path):
    out = tmp_path / "triton"
    import onnxruntime

    # a release fdkd's table does not list: its ONNX Runtime named from its notes (here: the one validated)
    result = _export(served_run, out, "--max-queue-delay-ms", "0.5", "--storage-uri", "s3://models/fdkd",
                     "--runtime-version", "24.08-py3", "--target-onnxruntime", onnxruntime.__version__)
    assert result.exit_code == 0, result.output
    manifest = json.loads((served_run / "manifest.json").read_text())
    model_dir = out / "model_repository" / "served"
    cfg = _config(model_dir / "config.pbtxt")
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("served", "onnxruntime_onnx", 64)
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["fdkd_sha256"].string_value == manifest["artifacts"]["student.onnx"]["sha256"]
    assert cfg.parameters["fdkd_validation"].string_value.startswith("passed (max_abs_logit=")

    graph = model_dir / "1" / "model.onnx"
    assert artifacts.sha256_file(graph) == manifest["artifacts"]["student.onnx"]["sha256"]
    g = onnx.load(str(graph)).graph
    for declared, tensors in ((cfg.input, g.input), (cfg.output, g.output)):
        assert [t.name for t in declared] == [t.name for t in tensors]
        for t, real in zip(declared, tensors, strict=True):
            assert t.data_type == model_config_pb2.TYPE_FP32
            assert list(t.dims) == [d.dim_value for d in real.type.tensor_type.shape.dim][1:]  # batch axis dropped
    assert cfg.output[0].label_filename == "labels.txt"
    assert (model_dir / "labels.txt").read_text().splitlines() == manifest["class_names"]

    isvc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
    assert (model["storageUri"], model["runtimeVersion"]) == ("s3://models/fdkd", "24.08-py3")
    assert "nvidia.com/gpu" not in model["resources"]["limits"]  # CPU only: no TensorRT plan, ONNX on CPU
    summary = json.loads((out / "export.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["served"] and summary["left_out"] == []
    assert summary["triton"] == {"runtime_version": "24.08-py3", "onnxruntime": onnxruntime.__version__,
                                 "onnxruntime_from": "--target-onnxruntime"}

    # an earlier export is replaced; a folder the export did not write is refused and left alone
    assert _export(served_run, out, "--max-batch", "8").exit_code == 0
    assert _config(model_dir / "config.pbtxt").max_batch_size == 8
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    result = _export(served_run, foreign)
    assert result.exit_code == 2 and "was not written by `fdkd export triton`" in " ".join(result.output.split())
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    assert _export(served_run, tmp_path / "x", "--onnx", "nope.onnx").exit_code == 2


def test_failed_or_unvalidated_onnx_is_refused_and_tampered_never_exported(run_copy, tmp_path):
    vpath = run_copy / "validation.json"
    validation = json.loads(vpath.read_text())
    entry = next(a for a in validation["artifacts"] if a["name"] == "student.onnx")
    entry["gate"] |= {"passed": False, "value": 0.5}
    vpath.write_text(json.dumps(validation))
    out = tmp_path / "out"
    result = _export(run_copy, out)
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "student.onnx failed its validation gate in mode [" in text
    assert "(max_abs_logit=0.5, limit" in text
    assert not out.exists()
    result = _export(run_copy, out, "--allow-unvalidated")
    assert result.exit_code == 0, result.output
    param = _config(out / "model_repository" / "served" / "config.pbtxt").parameters["fdkd_validation"]
    assert param.string_value.startswith("UNVALIDATED, exported with --allow-unvalidated")
    assert "warning" in result.output

    with open(run_copy / "student.onnx", "ab") as f:
        f.write(b"\0")
    out2 = tmp_path / "out2"
    result = _export(run_copy, out2, "--allow-unvalidated")
    assert result.exit_code == 1 and "sha256 mismatch" in result.output
    assert not out2.exists() and not list(tmp_path.glob(".out2.*"))  # no half-written repository either


def _add_plan(run_dir, precision: str, validation_entry: dict) -> str:
    """A TensorRT plan registered like `fdkd build` does. The bytes stand in for an engine (no TensorRT on
    CPU machines); the exporter copies plans by hash and reads their sidecars, never their contents."""
    name = f"student.{precision}.nvidia-h200.trt10.3.0.plan"
    (run_dir / name).write_bytes(f"stand-in {precision} engine".encode())
    src = {"fp16": "student.fp16.onnx", "int8": "student.int8.minmax.onnx"}[precision]
    artifacts.write_json(run_dir / name.replace(".plan", ".build.json"), {
        "tensorrt": "10.3.0", "gpu": "NVIDIA H200", "precision": precision, "onnx": src,
        "profile": {"input": "input", "min": 1, "opt": 8, "max": 32}})
    mpath = run_dir / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["artifacts"][name] = {"path": name, "sha256": artifacts.sha256_file(run_dir / name), "stage": "build",
                                   "precision": precision}
    mpath.write_text(json.dumps(manifest))
    vpath = run_dir / "validation.json"
    validation = json.loads(vpath.read_text())
    validation["artifacts"].append({"name": name, "sha256": artifacts.sha256_file(run_dir / name),
                                    "precision": precision, "target": "tensorrt", **validation_entry})
    vpath.write_text(json.dumps(validation))
    return name


def test_validated_tensorrt_plan_becomes_a_second_model_and_unvalidated_ones_are_left_out(run_copy, tmp_path):
    fp16 = _add_plan(run_copy, "fp16", {"gate": {"metric": "accuracy_drop_pt", "value": 0.1, "limit": 0.3,
                                                 "passed": True}})
    int8 = _add_plan(run_copy, "int8", {"skipped": "RuntimeError: engine built for another GPU"})
    out = tmp_path / "out"
    result = _export(run_copy, out)
    assert result.exit_code == 0, result.output
    trt = out / "model_repository" / "served_trt_fp16"
    cfg = _config(trt / "config.pbtxt")
    assert (cfg.platform, cfg.max_batch_size) == ("tensorrt_plan", 32)  # the engine profile's max batch
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cfg.parameters["fdkd_tensorrt"].string_value == "10.3.0"
    assert list(cfg.input[0].dims) == list(_config(out / "model_repository/served/config.pbtxt").input[0].dims)
    assert (trt / "1" / "model.plan").read_bytes() == (run_copy / fp16).read_bytes()
    summary = json.loads((out / "export.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["served", "served_trt_fp16"]
    assert summary["left_out"] == [{"artifact": int8, "reason": "not validated: validation skipped it "
                                                                "(RuntimeError: engine built for another GPU)"}]
    assert f"left out {int8}" in " ".join(result.output.split())
    text = (out / "inferenceservice.yaml").read_text()
    assert "TensorRT 10.3.0" in text.split("apiVersion")[0]  # the comment naming the Triton release to pick
    assert yaml.safe_load(text)["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    assert _export(run_copy, tmp_path / "all", "--allow-unvalidated").exit_code == 0
    assert (tmp_path / "all" / "model_repository" / "served_trt_int8" / "1" / "model.plan").exists()


def test_string_literals_survive_tritons_parser():
    s = 'a "quoted" \\ back\nslash, ünïcode €'
    cfg = text_format.Parse(f"parameters {{ key: \"k\" value {{ string_value: {_q(s)} }} }}",
                            model_config_pb2.ModelConfig())
    assert cfg.parameters["k"].string_value == s


def test_export_stage_command_is_still_there():
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0 and "Export student.pt to ONNX" in result.output and "triton" in result.output
    result = runner.invoke(app, ["export", "--set", "seed=1", "triton", "a", "b"])
    assert result.exit_code == 2 and "belong to the export stage" in " ".join(result.output.split())


# ---- the exported entry is checked against the target exactly as `fdkd serve` checks its own mode ----

def _entries(run_dir, name):
    v = json.loads((run_dir / "validation.json").read_text())
    return v, [a for a in v["artifacts"] if a["name"] == name and "mode" in a]


def _rewrite(run_dir, name, **mode):
    v, entries = _entries(run_dir, name)
    for a in entries:
        a["mode"] |= mode
    (run_dir / "validation.json").write_text(json.dumps(v))


INT8CPU = "student.int8cpu.onnx"


def test_export_writes_the_validated_mode_into_config_and_export_json(served_run, tmp_path):
    import onnxruntime

    from fdkd.serving.runtime.cpu_isa import int8_kernels

    out = tmp_path / "out"
    result = _export(served_run, out, "--onnx", INT8CPU)
    assert result.exit_code == 0, result.output
    mode = json.loads(_config(out / "model_repository/served/config.pbtxt").parameters["fdkd_execution_mode"]
                      .string_value)
    _, (validated,) = _entries(served_run, INT8CPU)
    assert mode == validated["mode"]
    assert (mode["int8_kernels"], mode["ort_version"], mode["qdq"]) == (int8_kernels(), onnxruntime.__version__,
                                                                         "fused")
    summary = json.loads((out / "export.json").read_text())
    assert summary["models"][0]["mode"] == mode and summary["models"][0]["validated"] is True
    # the target named explicitly as what it was validated on: still exported
    assert _export(served_run, tmp_path / "o2", "--onnx", INT8CPU, "--target-int8-kernels", int8_kernels(),
                   "--target-onnxruntime", onnxruntime.__version__).exit_code == 0


def _refused(run_dir, out, *args) -> str:
    result = _export(run_dir, out, *args)
    assert result.exit_code == 1, result.output
    assert not out.exists()
    return " ".join(result.output.split())


def test_int8_kernel_family_of_the_target_differs(served_run, tmp_path):
    from fdkd.serving.runtime.cpu_isa import int8_kernels

    other = "x86" if int8_kernels() != "x86" else "x86-vnni"
    text = _refused(served_run, tmp_path / "out", "--onnx", INT8CPU, "--target-int8-kernels", other)
    assert f"int8_kernels: validated {int8_kernels()}, the export target {other} (--target-int8-kernels)" in text
    assert "nothing exported" in text
    # FP32 has no INT8 kernels: the family does not matter
    assert _export(served_run, tmp_path / "fp32", "--target-int8-kernels", other).exit_code == 0
    out = tmp_path / "forced"
    assert _export(served_run, out, "--onnx", INT8CPU, "--target-int8-kernels", other,
                   "--allow-unvalidated").exit_code == 0
    cfg = _config(out / "model_repository/served/config.pbtxt")
    assert cfg.parameters["fdkd_validated"].string_value == "false"
    assert json.loads(cfg.parameters["fdkd_execution_mode"].string_value)["int8_kernels"] == other


def test_kernel_family_changed_in_validation_is_refused(run_copy, tmp_path):
    from fdkd.serving.runtime.cpu_isa import int8_kernels

    other = "arm-dotprod"
    _rewrite(run_copy, INT8CPU, int8_kernels=other)  # validated on another machine, exported here
    text = _refused(run_copy, tmp_path / "out", "--onnx", INT8CPU)
    assert f"int8_kernels: validated {other}, the export target {int8_kernels()}" in text
    assert _export(run_copy, tmp_path / "ok", "--onnx", INT8CPU, "--target-int8-kernels", other).exit_code == 0


def test_gpu_target_with_cpu_only_validation_is_refused(served_run, tmp_path):
    text = _refused(served_run, tmp_path / "out", "--onnx-device", "gpu")
    assert ("provider: validated CPUExecutionProvider, the export target CUDAExecutionProvider (--onnx-device)"
            in text)


def test_onnxruntime_version_differs(served_run, run_copy, tmp_path):
    import onnxruntime

    text = _refused(served_run, tmp_path / "out", "--target-onnxruntime", "1.18.0")
    assert f"ort_version: validated {onnxruntime.__version__}, the export target 1.18.0 (--target-onnxruntime)" in text
    _rewrite(run_copy, "student.onnx", ort_version="1.17.3")  # validated under another ONNX Runtime
    text = _refused(run_copy, tmp_path / "out2")
    assert f"ort_version: validated 1.17.3, the export target {onnxruntime.__version__}" in text
    # the server refuses the same entry, for the same reason (one check for both)
    from fdkd.serving.model import NotServable, load_model

    with pytest.raises(NotServable, match=f"ort_version: validated 1.17.3, this server {onnxruntime.__version__}"):
        load_model(run_copy)
    result = _export(run_copy, tmp_path / "x", "--target-onnxruntime", "latest")
    assert result.exit_code == 2 and "--target-onnxruntime must be a version" in " ".join(result.output.split())
    result = _export(run_copy, tmp_path / "x", "--target-int8-kernels", "avx9")
    assert result.exit_code == 2 and "--target-int8-kernels must be one of" in " ".join(result.output.split())


def test_graph_optimisation_differs(run_copy, tmp_path):
    """An entry judged with only basic graph optimisation (Q/DQ emulated) does not cover Triton's full one."""
    _rewrite(run_copy, "student.onnx", graph_optimization="basic")
    text = _refused(run_copy, tmp_path / "out")
    assert "graph_optimization: validated basic, the export target all" in text
    from fdkd.serving.model import NotServable, load_model

    with pytest.raises(NotServable, match="graph_optimization: validated basic, this server all"):
        load_model(run_copy)


def test_runtime_version_names_the_onnxruntime_of_that_triton_release(served_run, run_copy, tmp_path):
    """--runtime-version 24.12-py3 is Triton with ONNX Runtime 1.19.2 (NVIDIA's release notes): a graph validated
    under another ONNX Runtime is refused, saying how to re-validate; one validated under 1.19.2 goes."""
    import onnxruntime

    from fdkd.pipeline.triton_repo import TRITON_ONNXRUNTIME

    assert TRITON_ONNXRUNTIME["24.12"] == "1.19.2"
    if onnxruntime.__version__ != "1.19.2":
        text = _refused(served_run, tmp_path / "out", "--runtime-version", "24.12-py3")
        assert (f"ort_version: validated {onnxruntime.__version__}, the export target (Triton 24.12-py3) 1.19.2"
                in text)
        assert "re-validate under it (pip install 'onnxruntime==1.19.2'" in text and "`fdkd validate`" in text
    _rewrite(run_copy, "student.onnx", ort_version="1.19.2")  # as if validated under Triton 24.12's ONNX Runtime
    out = tmp_path / "ok"
    result = _export(run_copy, out, "--runtime-version", "24.12-py3")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "export.json").read_text())
    assert summary["triton"]["onnxruntime"] == "1.19.2" and summary["models"][0]["mode"]["ort_version"] == "1.19.2"
    cfg = _config(out / "model_repository" / "served" / "config.pbtxt")
    assert json.loads(cfg.parameters["fdkd_execution_mode"].string_value)["ort_version"] == "1.19.2"
    isvc = (out / "inferenceservice.yaml").read_text()
    assert "runtimeVersion 24.12-py3: Triton with ONNX Runtime 1.19.2" in isvc
    assert yaml.safe_load(isvc)["spec"]["predictor"]["model"]["runtimeVersion"] == "24.12-py3"


def test_runtime_version_refusals_name_the_option(served_run, tmp_path):
    out = tmp_path / "out"
    result = _export(served_run, out, "--runtime-version", "24.08-py3")  # not in the table, no --target-onnxruntime
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "name it with --target-onnxruntime X.Y.Z from that release's notes" in text
    result = _export(served_run, out, "--runtime-version", "24.12-py3", "--target-onnxruntime", "1.20.1")
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "--target-onnxruntime 1.20.1 contradicts --runtime-version 24.12-py3" in text
    result = _export(served_run, out, "--runtime-version", "latest")
    assert result.exit_code == 2 and "--runtime-version must be a Triton image tag" in " ".join(result.output.split())
    text = _refused(served_run, out, "--runtime-version", "24.02-py3")
    assert "Triton 24.02-py3 ships no ONNX Runtime backend" in text
    assert not out.exists()
