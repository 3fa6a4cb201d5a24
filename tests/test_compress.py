"""Export, lint, FP16/INT8 quantization and gates, on the session's tiny student."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from calibration.dataset import NpzCalibrationReader, choose_rows, write_calibration_set
from calibration.quantize import convert_fp16, quantize_int8, zero_points
from calibration.sensitivity import layer_errors
from pipeline import artifacts, distill, export
from pipeline.config import ExportConfig, RunConfig
from pipeline.onnx_lint import lint_file, lint_model
from pipeline.validate import gate
from serving.runtime import load_runtime


@pytest.fixture(scope="module")
def exported(tiny_cfg, tiny_teachers, tiny_dataset, tmp_path_factory):
    cfg = tiny_cfg.model_copy(update={"name": "compress"})
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "teacher.image.pt").symlink_to(tiny_teachers["image"])
    student, _ = distill.run(cfg)
    x_val, _ = tiny_dataset.take("audio", "val")
    out = run_dir / artifacts.ONNX_FP32
    info = export.run(student, x_val, out, ExportConfig())
    calib = run_dir / artifacts.CALIB
    write_calibration_set(calib, export.INPUT_NAME, tiny_dataset.x["audio"], tiny_dataset.y,
                          tiny_dataset.indices("train"), 64, 0)
    return {"dir": run_dir, "student": student, "onnx": out, "info": info, "calib": calib}


def test_export_graph_is_clean_named_and_batch_dynamic(exported):
    model = onnx.load(str(exported["onnx"]))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and all(d.dim_value > 0 for d in dims[1:])
    assert 17 <= model.opset_import[0].version <= 20
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["fdkd.exporter"] == "dynamo" and "zero" in meta["class_names"]
    assert lint_model(model) == []
    # parity was measured at the three batch sizes and passed
    parity = exported["info"]["parity"]
    assert set(parity) == {"1", "7", "64"}
    assert all(r["max_abs"] <= 1e-4 and r["argmax_equal"] for r in parity.values())
    # only the backbone and its head are exported: no projector or shared classifiers
    assert not any("projector" in t.name or "cls_" in t.name for t in model.graph.initializer)


def test_parity_failure_is_loud(exported, tiny_dataset, tmp_path):
    x_val, _ = tiny_dataset.take("audio", "val")
    cfg = ExportConfig(parity_atol=1e-12)  # impossible: float32 round-off alone exceeds it
    out = tmp_path / "student.onnx"
    with pytest.raises(export.ExportError, match="parity_atol"):
        export.run(exported["student"], x_val, out, cfg)
    assert not out.exists()  # nothing written under the final name


def test_torchscript_exporter_is_selectable(exported, tiny_dataset, tmp_path):
    x_val, _ = tiny_dataset.take("audio", "val")
    info = export.run(exported["student"], x_val, tmp_path / "ts.onnx", ExportConfig(exporter="torchscript", opset=17))
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "ts.onnx")).metadata_props}
    assert meta["fdkd.exporter"] == "torchscript" and info["opset"] == 17


def test_lint_names_offending_nodes(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("DFT", ["x"], ["y"], name="band_fft", onesided=1)], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    issues = lint_model(model)
    text = [str(i) for i in issues]
    assert any("band_fft (DFT)" in t and "support list" in t for t in text)
    assert any("opset 21" in t for t in text)
    x2 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [x2], [y])
    issues = lint_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert any("axis 1 is dynamic" in str(i) for i in issues)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_qdq_is_symmetric_and_tensorrt_clean(exported, tiny_dataset, method):
    out = exported["dir"] / artifacts.ONNX_INT8.format(method=method)
    quantize_int8(exported["onnx"], out, exported["calib"], "input", method)
    zps = zero_points(out)
    assert len(zps) >= 10  # activations and per-channel weights are all quantized
    assert all(v == 0 for values in zps.values() for v in values), "TensorRT needs every zero point to be 0"
    model = onnx.load(str(out))
    qtypes = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= qtypes
    inits = {t.name: t for t in model.graph.initializer}
    zp_types = {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert zp_types == {TensorProto.INT8}  # signed INT8 activations
    assert lint_file(out) == []
    rt = load_runtime(out, emulate_qdq=True)
    fp32 = load_runtime(exported["onnx"])
    x, _ = tiny_dataset.take("audio", "test")
    assert np.abs(rt(x) - fp32(x)).max() < 0.5 * np.abs(fp32(x)).max()
    assert {p.key: p.value for p in model.metadata_props}["fdkd.calibration"] == method


def test_cpu_int8_variant_and_exclude(exported):
    out = exported["dir"] / artifacts.ONNX_INT8_CPU
    quantize_int8(exported["onnx"], out, exported["calib"], "input", "minmax", target="cpu")
    assert any(v != 0 for values in zero_points(out).values() for v in values)  # asymmetric: not for TensorRT
    assert any("zero point" in str(i) for i in lint_file(out))
    first_conv = next(n.name for n in onnx.load(str(exported["onnx"])).graph.node if n.op_type == "Conv")
    kept = exported["dir"] / "excluded.onnx"
    quantize_int8(exported["onnx"], kept, exported["calib"], "input", "minmax", exclude=(first_conv,))
    graph = onnx.load(str(kept)).graph
    conv = next(n for n in graph.node if n.name == first_conv)
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert producers.get(conv.input[1]) != "DequantizeLinear"  # its weight stayed float


def test_fp16_graph_keeps_fp32_io(exported, tiny_dataset):
    out = exported["dir"] / artifacts.ONNX_FP16
    convert_fp16(exported["onnx"], out)
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert lint_file(out) == []
    x, _ = tiny_dataset.take("audio", "test")
    diff = np.abs(load_runtime(out)(x) - load_runtime(exported["onnx"])(x)).max()
    assert 0 < diff < 0.05


def test_calibration_set_is_stratified_and_readable(exported, tiny_dataset):
    z = np.load(exported["calib"])
    assert z["input"].shape[0] == 64 and set(z.files) == {"input", "rows", "labels"}
    assert set(z["rows"]) <= set(tiny_dataset.indices("train"))
    counts = np.bincount(z["labels"], minlength=10)
    train_counts = np.bincount(tiny_dataset.y[tiny_dataset.indices("train")], minlength=10)
    expected = train_counts / train_counts.sum() * 64  # proportional to the training split's classes
    assert counts.min() >= 1 and np.abs(counts - expected).max() <= 1.5
    reader = NpzCalibrationReader(exported["calib"], "input", batch=30)
    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(len(batch["input"]))
    assert sizes == [16, 16, 16, 16]  # equal batches (ORT's histogram calibrators stack them)
    with pytest.raises(ValueError, match="no array for ONNX input 'x'"):
        NpzCalibrationReader(exported["calib"], "x")
    rows = choose_rows(np.array([0] * 90 + [1] * 10), np.arange(100), 20, 0)
    assert len(rows) == 20 and (rows >= 90).sum() == 2


def test_small_calibration_set_warns(exported, tiny_dataset, tmp_path, caplog):
    summary = write_calibration_set(tmp_path / "c.npz", "input", tiny_dataset.x["audio"], tiny_dataset.y,
                                    tiny_dataset.indices("train"), 50, 0)
    assert summary["warnings"] and "< 300" in summary["warnings"][0]


def test_sensitivity_lists_layers_worst_first(exported):
    out = exported["dir"] / "sens.int8.onnx"
    quantize_int8(exported["onnx"], out, exported["calib"], "input", "minmax")
    rows = layer_errors(exported["onnx"], out, exported["calib"], "input")
    assert len(rows) >= 5 and rows[0]["sqnr_db"] <= rows[-1]["sqnr_db"]
    assert any(r["op_type"] == "Conv" and r["node"] for r in rows)


def test_gates_per_precision():
    cfg = RunConfig()
    fp32 = {"precision": "fp32", "metrics": {"max_abs_logit": 5e-5, "agree_student_pt": 1.0}}
    assert gate(fp32, cfg, 0.9)["passed"]
    assert not gate(fp32 | {"metrics": {"max_abs_logit": 2e-4, "agree_student_pt": 1.0}}, cfg, 0.9)["passed"]
    fp16 = {"precision": "fp16", "metrics": {"accuracy": 0.898}}
    assert gate(fp16, cfg, 0.900)["passed"]  # 0.2 pt drop <= 0.3
    assert not gate(fp16, cfg, 0.902)["passed"]  # 0.4 pt
    int8 = {"precision": "int8", "metrics": {"accuracy": 0.89}}
    assert gate(int8, cfg, 0.90)["passed"] and not gate(int8, cfg, 0.905)["passed"]
