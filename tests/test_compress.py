"""Export, lint, FP16/INT8 quantization and gates, on the session's tiny student."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fdkd import artifacts
from fdkd.calibration.dataset import CalibrationRows, NpzCalibrationReader, choose_rows, write_calibration_set
from fdkd.calibration.quantize import convert_fp16, quantize_int8, zero_points
from fdkd.calibration.sensitivity import layer_errors
from fdkd.onnx_lint import lint_file, lint_model
from fdkd.pipeline import distill, export
from fdkd.pipeline.config import ExportConfig, RunConfig
from fdkd.pipeline.validate import gate
from fdkd.serving.runtime import load_runtime
from fdkd.serving.runtime.cpu_isa import int8_kernels


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
    return {"dir": run_dir, "student": student, "onnx": out, "info": info, "calib_path": calib,
            "calib": CalibrationRows(calib, export.INPUT_NAME, tiny_dataset.x["audio"])}


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



def test_export_bytes_carry_no_checkout_path_and_repeat(exported, tiny_dataset, tmp_path):
    """The exporter's per-node debug metadata (stack traces with this checkout's absolute paths, module import
    paths) is dropped: the graph's sha256 depends on the weights and architecture, not on where the code is."""
    model = onnx.load(str(exported["onnx"]))
    assert not any(n.metadata_props for n in model.graph.node)
    raw = exported["onnx"].read_bytes()
    root = Path(__file__).resolve().parents[1]
    for leak in (str(root).encode(), b"stack_trace", b"encoders.py", b"fdkd.pipeline.models"):
        assert leak not in raw, leak
    x_val, _ = tiny_dataset.take("audio", "val")
    again = tmp_path / "again.onnx"
    export.run(exported["student"], x_val, again, ExportConfig())
    assert again.read_bytes() == raw


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
    x, _ = tiny_dataset.take("audio", "test")
    ref = load_runtime(exported["onnx"])(x)
    emulated = load_runtime(out, emulate_qdq=True)
    err = emulated(x) - ref
    assert np.abs(err).max() > 0  # it really is quantized
    sqnr_db = 10 * np.log10(np.mean(ref**2) / np.mean(err**2))
    assert sqnr_db >= 25, f"INT8 ({method}) logits SQNR {sqnr_db:.1f} dB against FP32"  # 8-bit: ~30-45 dB here
    assert emulated.mode()["qdq"] == "emulated" and emulated.mode()["graph_optimization"] == "basic"
    assert {p.key: p.value for p in model.metadata_props}["fdkd.calibration"] == method


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_fused_int8_kernels_compute_the_emulated_graph(exported, tiny_dataset, target):
    """ONNX Runtime's fused INT8 kernels compute the Q/DQ graph as written, within a few output quantization steps:
    the CPU variant (U8S8, 7-bit weights) on every CPU; the TensorRT graph (S8S8, full-range weights) only where the
    kernels accumulate in 32 bits (x86 VNNI, ARM): x86 without VNNI sums pairs of products in 16 bits and saturates
    (its fused mode then fails validation and is not servable; tests/test_chain.py)."""
    if target == "tensorrt" and int8_kernels() == "x86":
        pytest.skip("x86 without VNNI: the full-range S8S8 graph saturates in ONNX Runtime's fused kernels here")
    out = exported["dir"] / f"fused-{target}.onnx"
    quantize_int8(exported["onnx"], out, exported["calib"], "input", "minmax", target=target)
    x, _ = tiny_dataset.take("audio", "test")
    ref = load_runtime(exported["onnx"])(x)
    emulated, fused = load_runtime(out, emulate_qdq=True), load_runtime(out)
    assert fused.mode()["qdq"] == "fused" and fused.mode()["graph_optimization"] == "all"
    assert fused.mode()["int8_kernels"] == int8_kernels()
    assert np.abs(fused(x) - emulated(x)).max() <= 0.05 * np.abs(ref).max()


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
    fp16, fp32 = load_runtime(out), load_runtime(exported["onnx"])
    diff = np.abs(fp16(x) - fp32(x)).max()
    assert 0 < diff < 0.05
    assert fp16.mode()["qdq"] is None and fp32.mode()["qdq"] is None  # no Q/DQ nodes: nothing to fuse


def _dynamic_graph(path):
    """A Conv graph whose height axis is dynamic: TensorRT lint says only the batch axis may be."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 1, 3, 3)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, "height", 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["logits"], name="conv")], "g", [x], [y],
                              initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_fp16_and_int8_graphs_go_through_the_tensorrt_lint(tmp_path):
    from fdkd.calibration.quantize import QuantizeError

    src = tmp_path / "dyn.onnx"
    _dynamic_graph(src)
    with pytest.raises(QuantizeError, match=r"student.fp16.onnx fails the TensorRT lint:\n.*axis 2 is dynamic"):
        convert_fp16(src, tmp_path / "student.fp16.onnx")
    assert not (tmp_path / "student.fp16.onnx").exists()  # never written under its final name
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(1).standard_normal((16, 1, 8, 8)).astype(np.float32))
    with pytest.raises(QuantizeError, match=r"student.int8.minmax.onnx fails the TensorRT lint"):
        quantize_int8(src, tmp_path / "student.int8.minmax.onnx", calib, "input", "minmax")
    assert not (tmp_path / "student.int8.minmax.onnx").exists()
    # the CPU variant is not for TensorRT: not linted, written
    quantize_int8(src, tmp_path / "student.int8cpu.onnx", calib, "input", "minmax", target="cpu")
    assert (tmp_path / "student.int8cpu.onnx").exists()


def test_quantize_linear_without_zero_point_is_a_lint_error():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    scale = onnx.numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zp = onnx.numpy_helper.from_array(np.array(0, np.int8), "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale"], ["q"], name="q_no_zp"),
             helper.make_node("DequantizeLinear", ["q", "scale"], ["y"], name="dq")]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[scale, zp])
    issues = [str(i) for i in lint_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))]
    assert issues == ["q_no_zp (QuantizeLinear): no zero-point input: the output is uint8; TensorRT needs an int8 "
                      "zero point of 0"]
    nodes[0] = helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="q_int8")
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[scale, zp])
    assert lint_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])) == []


def test_calibration_set_is_stratified_and_readable(exported, tiny_dataset):
    z = np.load(exported["calib_path"])
    # row indices, labels and per-row input hashes: never a copy of the inputs
    assert len(z["rows"]) == 64 and set(z.files) == {"rows", "labels", "sha256", "input_shape"}
    assert z["sha256"].shape == (64, 32) and tuple(z["input_shape"]) == tiny_dataset.x["audio"].shape[1:]
    assert set(z["rows"]) <= set(tiny_dataset.indices("train"))
    counts = np.bincount(z["labels"], minlength=10)
    train_counts = np.bincount(tiny_dataset.y[tiny_dataset.indices("train")], minlength=10)
    expected = train_counts / train_counts.sum() * 64  # proportional to the training split's classes
    assert counts.min() >= 1 and np.abs(counts - expected).max() <= 1.5
    reader = exported["calib"].reader(batch=30)
    sizes = []
    while (batch := reader.get_next()) is not None:
        sizes.append(len(batch["input"]))
    assert sizes == [16, 16, 16, 16]  # equal batches (ORT's histogram calibrators stack them)
    got = np.concatenate([b["input"] for b in iter(exported["calib"].reader(batch=30).get_next, None)])
    np.testing.assert_array_equal(got, tiny_dataset.x["audio"][z["rows"]])  # the rows, read from the dataset
    with pytest.raises(ValueError, match="no array for ONNX input 'x'.*names dataset rows"):
        NpzCalibrationReader(exported["calib_path"], "x")
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
    gates = RunConfig().validate_.gates
    fp32 = {"precision": "fp32", "metrics": {"max_abs_logit": 5e-5, "agree_student_pt": 1.0}}
    assert gate(fp32, gates, 0.9)["passed"]
    assert not gate(fp32 | {"metrics": {"max_abs_logit": 2e-4, "agree_student_pt": 1.0}}, gates, 0.9)["passed"]
    # the limit is per unit of student.pt's largest |logit|: 2e-4 on logits near 9 is float rounding
    big = gate(fp32 | {"metrics": {"max_abs_logit": 2e-4, "agree_student_pt": 1.0, "logit_scale": 9.0}}, gates, 0.9)
    assert big["passed"] and big["limit"] == pytest.approx(9e-4)
    assert not gate(fp32 | {"metrics": {"max_abs_logit": 1e-3, "agree_student_pt": 1.0, "logit_scale": 9.0}},
                    gates, 0.9)["passed"]
    flipped = gate(fp32 | {"metrics": {"max_abs_logit": 5e-5, "agree_student_pt": 0.99}}, gates, 0.9)
    assert not flipped["passed"] and flipped["metric"] == "agree_student_pt_pct"
    fp16 = {"precision": "fp16", "metrics": {"accuracy": 0.898, "agree_student_pt": 0.995}}
    assert gate(fp16, gates, 0.900)["passed"]  # 0.2 pt drop <= 0.3, 99.5 % agreement >= 99
    assert not gate(fp16, gates, 0.902)["passed"]  # 0.4 pt
    # same accuracy, but 2 % of the rows changed class (flips that cancel out in accuracy): the agreement gate fails
    g = gate(fp16 | {"metrics": {"accuracy": 0.9, "agree_student_pt": 0.98}}, gates, 0.9)
    assert not g["passed"] and (g["metric"], g["value"], g["limit"]) == ("agree_student_pt_pct", 98.0, 99.0)
    assert [c["passed"] for c in g["checks"]] == [True, False]
    int8 = {"precision": "int8", "metrics": {"accuracy": 0.89, "agree_student_pt": 0.97}}
    assert gate(int8, gates, 0.90)["passed"] and not gate(int8, gates, 0.905)["passed"]
    assert not gate(int8 | {"metrics": {"accuracy": 0.9, "agree_student_pt": 0.969}}, gates, 0.9)["passed"]
    looser = gates.model_copy(update={"int8_min_agree_pct": 96.0})  # configurable
    assert gate(int8 | {"metrics": {"accuracy": 0.9, "agree_student_pt": 0.969}}, looser, 0.9)["passed"]
    assert not gate({"precision": "unknown", "metrics": {"agree_student_pt": 1.0}}, gates, 0.9)["passed"]
