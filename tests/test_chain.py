"""One chain of hashes from gate to server: each break of it leaves the server live but not ready, with the reason.

Every test starts from a copy of the session's finished run (``served_run``), breaks one link the way a user
would (a standalone ``fdkd export``/``fdkd quantize`` after validation, an engine with no entry of its own, an
INT8 graph judged only with Q/DQ emulated, another thread count) and asks the real readiness code path
(``fdkd.serving.model.load_model``, which the app's lifespan calls) or a real uvicorn server.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from fdkd import artifacts
from fdkd.serving.model import NotServable, load_model
from fdkd.serving.runtime.cpu_isa import int8_kernels
from tests.serving_helpers import running_server

INT8_TRT = "student.int8.minmax.onnx"


@pytest.fixture
def run_copy(served_run, tmp_path):
    dst = tmp_path / "runs" / "served"
    shutil.copytree(served_run, dst)
    return dst


def _validation(run_dir):
    return json.loads((run_dir / "validation.json").read_text())


def _write_validation(run_dir, v):
    (run_dir / "validation.json").write_text(json.dumps(v))


def _served_cfg(run_dir, *sets):
    """The config the session's served run was made with, pointed at this copy (same data cache, same stages)."""
    from fdkd.pipeline.config import load_config
    from tests.conftest import SERVED_OVERRIDES, tiny_overrides

    manifest = json.loads((run_dir / "manifest.json").read_text())
    tiny_root = Path(manifest["artifacts"]["dataset"]["path"]).parents[1]
    return load_config(None, tiny_overrides(tiny_root) + SERVED_OVERRIDES + [f"runs_dir={run_dir.parent}", *sets])


def test_every_entry_records_its_hash_and_execution_mode(served_run):
    v = _validation(served_run)
    by_name: dict[str, list[dict]] = {}
    for a in v["artifacts"]:
        by_name.setdefault(a["name"], []).append(a)
    for name in ("student.onnx", "student.fp16.onnx", INT8_TRT, "student.int8cpu.onnx", "student.pt"):
        for a in by_name[name]:
            assert a["sha256"] == artifacts.sha256_file(served_run / name), name
    for name in ("student.onnx", "student.fp16.onnx", INT8_TRT, "student.int8cpu.onnx"):
        for a in by_name[name]:
            # fused INT8 kernels differ per CPU family, so a fused entry also names the family it was judged on
            extra = {"int8_kernels"} if a["mode"]["qdq"] == "fused" else set()
            assert set(a["mode"]) == {"runtime", "provider", "graph_optimization", "qdq", "threads",
                                      "ort_version"} | extra
            assert a["mode"]["runtime"] == "onnxruntime" and a["mode"]["provider"] == "CPUExecutionProvider"
            if extra:
                assert a["mode"]["int8_kernels"] == int8_kernels()
    assert by_name["student.onnx"][0]["mode"]["qdq"] is None
    # the TensorRT INT8 graph: judged as written (reference, gates the graph) and as the CPU would serve it
    modes = {(a["mode"]["qdq"], a["mode"]["graph_optimization"], a["required"]) for a in by_name[INT8_TRT]}
    assert modes == {("emulated", "basic", True), ("fused", "all", False)}
    assert by_name["student.int8cpu.onnx"][0]["mode"]["qdq"] == "fused"
    for a in v["artifacts"]:
        if "gate" in a and a["precision"] in ("fp16", "int8"):
            assert [c["metric"] for c in a["gate"]["checks"]] == ["accuracy_drop_pt", "agree_student_pt_pct"]
    # no TensorRT here: the engines are "not validated" in the headline, never silently passed
    assert v["complete"] is False
    assert {m["name"] for m in v["not_validated"]} == {"tensorrt fp16 engine", "tensorrt int8 engine"}
    report = (served_run / "report.md").read_text()
    assert "# Validation report: PASSED (incomplete: 2 not validated here)" in report
    assert "fuses Q/DQ into INT8 kernels and approximates the reference" in report
    assert "how TensorRT reads them" not in report


def test_stale_validation_after_a_standalone_export_is_not_ready(run_copy):
    """`fdkd export` with another exporter after validation: manifest and file agree, validation.json is stale."""
    from fdkd.pipeline import run

    old_sha = artifacts.sha256_file(run_copy / "student.onnx")
    run.run(_served_cfg(run_copy, "export.exporter=torchscript", "export.opset=17"), force=("export",),
            stop_after="export")
    new_sha = artifacts.sha256_file(run_copy / "student.onnx")
    assert new_sha != old_sha
    manifest = json.loads((run_copy / "manifest.json").read_text())
    assert manifest["artifacts"]["student.onnx"]["sha256"] == new_sha  # the manifest alone cannot see the break
    with running_server(run_copy, wait_ready=False) as (url, _):
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 503
        assert f"validation.json is stale for student.onnx: it judged sha256 {old_sha[:12]}" in r.json()["error"]
        assert new_sha[:12] in r.json()["error"]
        assert httpx.get(f"{url}/v2/models/served").status_code == 503


def test_stale_validation_after_a_standalone_quantize_is_refused(run_copy):
    from fdkd.pipeline import run

    load_model(run_copy, "student.int8cpu.onnx")  # validated: loads
    run.run(_served_cfg(run_copy, "quantize.calib_samples=32"), force=("quantize",), stop_after="quantize")
    # a different calibration set size: different ranges, different graphs, one old validation.json
    with pytest.raises(NotServable, match="validation.json is stale for student.int8cpu.onnx"):
        load_model(run_copy, "student.int8cpu.onnx")
    with pytest.raises(NotServable, match=f"validation.json is stale for {INT8_TRT}"):
        load_model(run_copy, INT8_TRT)


def test_another_validated_thread_count_revalidates_without_retraining(run_copy):
    from fdkd.pipeline import run

    trained = {n: artifacts.sha256_file(run_copy / n) for n in ("teacher.image.pt", "student.pt", "student.onnx")}
    mtimes = {n: (run_copy / n).stat().st_mtime_ns for n in trained}
    with pytest.raises(NotServable, match=r"threads=3, ort_version=[^\]]+\]"):
        load_model(run_copy, threads=3)
    run.run(_served_cfg(run_copy, "validate.threads=3"))  # no --force: the validate key alone changed
    assert {n: artifacts.sha256_file(run_copy / n) for n in trained} == trained
    assert {n: (run_copy / n).stat().st_mtime_ns for n in trained} == mtimes  # not rewritten either
    onnx = [a for a in _validation(run_copy)["artifacts"] if a["name"] == "student.onnx"]
    assert onnx and all(a["mode"]["threads"] == 3 for a in onnx)
    assert load_model(run_copy, threads=3).mode["threads"] == 3


def test_int8_graph_validated_only_with_qdq_emulated_is_refused(run_copy):
    """The server runs ONNX Runtime at full optimisation (Q/DQ fused): an emulated-only verdict does not cover it."""
    model = load_model(run_copy, INT8_TRT)
    assert model.mode["qdq"] == "fused" and model.mode["graph_optimization"] == "all"
    v = _validation(run_copy)
    v["artifacts"] = [a for a in v["artifacts"] if not (a["name"] == INT8_TRT and a["mode"]["qdq"] == "fused")]
    _write_validation(run_copy, v)
    with pytest.raises(NotServable) as e:
        load_model(run_copy, INT8_TRT)
    msg = str(e.value)
    assert f"{INT8_TRT} was validated only in mode(s) [" in msg and "qdq=emulated" in msg
    assert "not in the mode this server would run it in [" in msg and "qdq=fused" in msg
    with running_server(run_copy, wait_ready=False, artifact=INT8_TRT) as (url, _):
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 503 and "qdq=emulated" in r.json()["error"]


def test_fused_mode_that_failed_its_gate_is_refused_though_the_graph_passed(run_copy):
    v = _validation(run_copy)
    for a in v["artifacts"]:
        if a["name"] == INT8_TRT and a["mode"]["qdq"] == "fused":
            a["gate"]["passed"] = False
    _write_validation(run_copy, v)
    with pytest.raises(NotServable, match=rf"{INT8_TRT} failed its validation gate in mode \[.*qdq=fused"):
        load_model(run_copy, INT8_TRT)
    assert load_model(run_copy, INT8_TRT, allow_unvalidated=True).warnings


def test_fused_int8_validated_on_another_cpu_family_is_refused(run_copy):
    """x86 without VNNI saturates in fused INT8 kernels where VNNI does not: a verdict from one family does not
    cover the other. The validation is moved to another family the way copying a run dir to another host would."""
    name = "student.int8cpu.onnx"
    assert load_model(run_copy, name).mode["int8_kernels"] == int8_kernels()
    other = "x86-vnni" if int8_kernels() != "x86-vnni" else "x86"
    v = _validation(run_copy)
    for a in v["artifacts"]:
        if a["mode"].get("qdq") == "fused":
            a["mode"]["int8_kernels"] = other
    _write_validation(run_copy, v)
    with pytest.raises(NotServable) as e:
        load_model(run_copy, name)
    msg = str(e.value)
    assert f"[runtime=onnxruntime, provider=CPUExecutionProvider, graph_optimization=all, qdq=fused, " \
           f"int8_kernels={other}, threads=" in msg
    assert f"judged on a CPU of another family; this CPU's is {int8_kernels()}" in msg
    assert load_model(run_copy).artifact == "student.onnx"  # FP32 has no INT8 kernels: still served
    for a in v["artifacts"]:  # a validation.json written before the family was recorded
        a["mode"].pop("int8_kernels", None)
    _write_validation(run_copy, v)
    with pytest.raises(NotServable, match="judged before fdkd recorded the CPU's INT8 kernel family"):
        load_model(run_copy, name)


def test_server_runs_the_validated_thread_count_and_refuses_another(run_copy):
    v = _validation(run_copy)
    validated = next(a for a in v["artifacts"] if a["name"] == "student.onnx")["mode"]["threads"]
    assert load_model(run_copy).mode["threads"] == validated
    other = (validated or 1) + 1
    pattern = rf"threads={other}, ort_version=[^\]]+\]\ \(validate with `--set validate.threads={other}`"
    with pytest.raises(NotServable, match=pattern):
        load_model(run_copy, threads=other)
    for a in v["artifacts"]:  # validated with 2 threads: the server, told nothing, runs 2
        if a["name"] == "student.onnx":
            a["mode"]["threads"] = 2
    _write_validation(run_copy, v)
    model = load_model(run_copy)
    assert model.mode["threads"] == 2 and model.runtime.mode() == model.mode


def test_validation_without_hashes_is_stale(run_copy):
    """A validation.json from before hashes were recorded validates nothing."""
    v = _validation(run_copy)
    for a in v["artifacts"]:
        a.pop("sha256", None)
        a.pop("mode", None)
    _write_validation(run_copy, v)
    with pytest.raises(NotServable, match="validation.json is stale for student.onnx: it judged sha256 none"):
        load_model(run_copy)


def _fake_engine(folder, run_dir, precision="fp16"):
    """A .plan with a sidecar naming this run's ONNX (its bytes are not an engine: TensorRT is not here)."""
    folder.mkdir(parents=True, exist_ok=True)
    src = {"fp16": "student.fp16.onnx", "int8": INT8_TRT}[precision]
    plan = folder / f"student.{precision}.h100-sm90.trt10.3.0.plan"
    plan.write_bytes(b"serialized engine " + precision.encode())
    (folder / f"{plan.stem}.build.json").write_text(json.dumps({
        "tensorrt": "10.3.0", "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"}, "precision": precision,
        "onnx": src, "onnx_sha256": artifacts.sha256_file(run_dir / src), "profile": {"max": 64}}))
    return plan


def test_engine_is_gated_on_its_own_entry_not_through_its_onnx(run_copy, tmp_path):
    engines = tmp_path / "engines"
    plan = _fake_engine(engines, run_copy)
    # its source ONNX passed its gate, but the engine has no entry of its own
    assert any(a["name"] == "student.fp16.onnx" and a["gate"]["passed"] for a in _validation(run_copy)["artifacts"])
    with pytest.raises(NotServable, match=f"{plan.name} was not validated"):
        load_model(run_copy, engine_dir=engines)
    with running_server(run_copy, wait_ready=False, engine_dir=engines) as (url, _):
        r = httpx.get(f"{url}/v2/health/ready")
        assert r.status_code == 503 and f"{plan.name} was not validated" in r.json()["error"]
    # an entry for an older build of the engine (another sha256) beside it: stale, the .plan is hashed
    mode = {"runtime": "tensorrt", "tensorrt": "10.3.0", "gpu": "NVIDIA H100", "compute_capability": "9.0",
            "qdq": None}
    entry = {"name": plan.name, "sha256": "0" * 64, "precision": "fp16", "mode": mode,
             "gate": {"passed": True, "metric": "accuracy_drop_pt", "value": 0.0, "limit": 0.3}}
    (engines / "validation.json").write_text(json.dumps({"artifacts": [entry]}))
    with pytest.raises(NotServable, match=f"validation.json is stale for {plan.name}"):
        load_model(run_copy, engine_dir=engines)
    # an entry that could not run where it was validated is "not validated", not a pass
    skipped = entry | {"sha256": artifacts.sha256_file(plan), "skipped": "RuntimeError: no CUDA GPU visible"}
    (engines / "validation.json").write_text(json.dumps({"artifacts": [skipped]}))
    with pytest.raises(NotServable, match=f"{plan.name} was not validated: it could not run"):
        load_model(run_copy, engine_dir=engines)
    # its own passing entry with its hash: the checks pass and loading is what stops it here (no TensorRT)
    good = entry | {"sha256": artifacts.sha256_file(plan)}
    (engines / "validation.json").write_text(json.dumps({"artifacts": [good]}))
    with pytest.raises(NotServable, match=f"cannot load {plan.name}"):
        load_model(run_copy, engine_dir=engines)


def test_engine_in_the_run_directory_is_hashed_against_the_manifest(run_copy):
    plan = _fake_engine(run_copy, run_copy)
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["artifacts"][plan.name] = {"path": plan.name, "sha256": artifacts.sha256_file(plan)}
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    plan.write_bytes(b"truncated")
    with pytest.raises(NotServable, match=f"{plan.name}: sha256 mismatch with the manifest"):
        load_model(run_copy, plan.name)


def test_triton_export_refuses_a_stale_validation(run_copy, tmp_path):
    from fdkd.pipeline.triton_repo import NotExportable, export_triton

    assert export_triton(run_copy, tmp_path / "ok")["models"][0]["validation"].startswith("passed")
    v = _validation(run_copy)
    for a in v["artifacts"]:
        if a["name"] == "student.onnx":
            a["sha256"] = "f" * 64  # what a validation of an earlier export recorded
    _write_validation(run_copy, v)
    with pytest.raises(NotExportable, match="validation.json is stale for student.onnx: it judged sha256 ffffffffffff"):
        export_triton(run_copy, tmp_path / "stale")
    assert not (tmp_path / "stale").exists()


def test_engine_chain_through_the_real_tensorrt_runtime_on_test_doubles(served_run, tmp_path, monkeypatch):
    """Build (fdkd's build code) -> validate_engine -> serve, with the real TensorRTRuntime over the test doubles
    of the absent tensorrt bindings and libcudart (tests/trt_fakes.py: the 'engine' is x @ WEIGHTS)."""
    import sys

    import numpy as np

    from fdkd.pipeline.build import build_engine
    from fdkd.pipeline.config import BuildConfig, RunConfig, config_to_dict
    from fdkd.pipeline.validate import ValidationFailed, validate_engine
    from tests.trt_fakes import CLASSES, FEATURES, WEIGHTS, HostCudart, fake_tensorrt, install_cuda

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    install_cuda(monkeypatch, HostCudart(name=b"NVIDIA H100 80GB HBM3", cc=(9, 0), sms=132, integrated=False))
    run_dir, engines = tmp_path / "run", tmp_path / "engines"
    run_dir.mkdir()
    src = run_dir / "student.fp16.onnx"
    src.write_bytes(b"onnx bytes")  # the fake builder never parses it
    from fdkd.pipeline.data.dataset import PairedDataset
    from fdkd.pipeline.data.rows import streamed
    from fdkd.row_features import row_sha256

    x = np.random.default_rng(0).standard_normal((40, 1, 3, 4)).astype(np.float32)
    ref = x.reshape(40, FEATURES) @ WEIGHTS  # student.pt's logits: what the engine computes
    y = ref.argmax(1)
    # the run's dataset: the engine is gated on its test rows, re-read and checked against their hashes
    rows = np.arange(40, dtype=np.int64)
    ds = PairedDataset({"audio": x}, y, np.full(40, 2, np.int8), [f"c{i}" for i in range(CLASSES)], {}, {})
    test_arrays = {"rows": rows, "sha256": row_sha256(x), "input_shape": np.array(x.shape[1:]), "y": y,
                   "ref_logits": ref, "teacher_pred": y}
    artifacts.save_npz(run_dir / "validation.testset.npz", test_arrays)
    served = json.loads((served_run / "manifest.json").read_text())
    io = {"inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 3, 4]}],
          "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", CLASSES]}]}
    manifest = {"format": "fdkd-run", "name": "tiny", "class_names": [f"c{i}" for i in range(CLASSES)],
                "preprocessing": served["preprocessing"], "student_modality": "audio",
                "config": config_to_dict(RunConfig()),
                "artifacts": {src.name: {"path": src.name, "sha256": artifacts.sha256_file(src), "onnx": io},
                              "validation.testset.npz": {"path": "validation.testset.npz",
                                                         "sha256": artifacts.sha256_file(
                                                             run_dir / "validation.testset.npz")}}}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "validation.json").write_text(json.dumps({"artifacts": []}))
    engines.mkdir()
    plan = build_engine(src, "fp16", engines, BuildConfig(max_batch=8, opt_batch=4))
    with pytest.raises(NotServable, match=f"{plan.name} was not validated"):
        load_model(run_dir, engine_dir=engines)
    entry = validate_engine(run_dir, plan, ds)
    assert entry["gate"]["passed"] and entry["metrics"]["max_abs_logit"] < 1e-4
    # the same rows streamed: the same verdict and numbers
    again = validate_engine(run_dir, plan, streamed(ds))
    assert again["metrics"]["max_abs_logit"] == entry["metrics"]["max_abs_logit"]
    assert again["predictions"] == entry["predictions"]
    # a test row whose input changed since validation is refused, named
    changed = x.copy()
    changed[17] += 1
    with pytest.raises(ValueError, match="test row 17 does not hash as validated"):
        validate_engine(run_dir, plan, PairedDataset({"audio": changed}, y, ds.split, ds.class_names, {}, {}))
    assert entry["mode"] == {"runtime": "tensorrt", "tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3",
                             "compute_capability": "9.0", "device": "h100-80gb-hbm3-sm90", "qdq": None}
    assert [a["name"] for a in json.loads((engines / "validation.json").read_text())["artifacts"]] == [plan.name]
    model = load_model(run_dir, engine_dir=engines)
    assert model.platform == "tensorrt_plan" and model.mode == entry["mode"] and model.sha256 == entry["sha256"]
    np.testing.assert_allclose(model.runtime(x[:3]), ref[:3], atol=1e-5)
    # another build under the same name (here: the same engine, one byte longer): its old entry is stale
    good = plan.read_bytes()
    plan.write_bytes(good + b"\0")
    with pytest.raises(NotServable, match=f"validation.json is stale for {plan.name}"):
        load_model(run_dir, engine_dir=engines)
    plan.write_bytes(good)
    # the test set is hashed like every artifact
    testset = run_dir / "validation.testset.npz"
    testset.write_bytes(testset.read_bytes()[:100])
    with pytest.raises(ValueError, match="does not match the run's manifest"):
        validate_engine(run_dir, plan, ds)
    # student.pt disagreeing with the engine on many rows: the engine fails its own gate and is refused
    artifacts.save_npz(run_dir / "validation.testset.npz", test_arrays | {"ref_logits": -ref})
    manifest["artifacts"]["validation.testset.npz"]["sha256"] = artifacts.sha256_file(
        run_dir / "validation.testset.npz")
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValidationFailed, match=f"{plan.name} .*agree_student_pt_pct"):
        validate_engine(run_dir, plan, ds)
    with pytest.raises(NotServable, match=f"{plan.name} failed its validation gate"):
        load_model(run_dir, engine_dir=engines)


def test_artifacts_are_readable_by_the_serving_user(served_run):
    """Containers serve the run directory read-only as another (non-root) user: every artifact is world-readable."""
    for name in ("student.onnx", INT8_TRT, "manifest.json", "validation.json", "validation.testset.npz"):
        assert (served_run / name).stat().st_mode & 0o044 == 0o044, name
