"""Export, calibration, quantization, validation and validate_engine on a streamed dataset (issue 29 item 2).

Each stage runs on the tiny served run's dataset twice, dense and streamed (``fdkd.pipeline.data.rows.streamed``:
the same features behind ``StreamRows``), and must write the same artifacts, byte for byte (validation.json: the
same numbers, latency aside), reading each row it needs once and never more than a chunk of rows at a time.
Calibration's memory must not grow with the calibration set.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fdkd import artifacts
from fdkd.calibration.dataset import CalibrationRows, RowsCalibrationReader
from fdkd.calibration.quantize import quantize_int8
from fdkd.calibration.sensitivity import layer_errors
from fdkd.pipeline.data import rows as rows_mod
from fdkd.row_features import FeatureSpool, apply, gather, row_sha256
from tests.conftest import SERVED_OVERRIDES, tiny_overrides


def _conv_graph(path, size: int = 32) -> None:
    """conv(1->16) relu conv(16->16) relu pool matmul: 16 x size x size activations per row and tensor."""
    rng = np.random.default_rng(0)

    def conv(name, cin, cout, inp):
        w = numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.2, name + "_w")
        return helper.make_node("Conv", [inp, name + "_w"], [name], name=name, pads=[1, 1, 1, 1]), w

    n1, w1 = conv("c1", 1, 16, "input")
    n2, w2 = conv("c2", 16, 16, "r1")
    nodes = [n1, helper.make_node("Relu", ["c1"], ["r1"], name="r1"), n2,
             helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="fl"),
             helper.make_node("MatMul", ["f", "wd"], ["logits"], name="mm")]
    wd = numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "wd")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                         ["batch", 1, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
                              [w1, w2, wd])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


class _Rows:
    """Calibration rows already in memory (what CalibrationRows holds for a dense dataset)."""

    def __init__(self, x):
        self.x = x

    def reader(self, batch: int = 32) -> RowsCalibrationReader:
        return RowsCalibrationReader(self.x, "input", batch)


def _peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("method", ["entropy", "minmax"])
def test_calibration_memory_does_not_grow_with_calibration_rows(tmp_path, method):
    """ONNX Runtime's histogram calibrators keep every batch's activations; with strides within a budget the peak
    (tracemalloc: numpy arrays, ORT's outputs included) is flat in the rows. The control, without a budget that
    binds, grows with them: the measurement can fail."""
    _conv_graph(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    xs = {n: rng.standard_normal((n, 1, 32, 32)).astype(np.float32) for n in (64, 512)}

    def peak(n: int, mb: float, what: str) -> float:
        out = tmp_path / f"{n}-{mb}.onnx"
        if what == "quantize":
            return _peak_mb(lambda: quantize_int8(tmp_path / "m.onnx", out, _Rows(xs[n]), "input", method,
                                                  target="cpu", activation_mb=mb))
        quantize_int8(tmp_path / "m.onnx", out, _Rows(xs[n]), "input", method, activation_mb=mb)
        return _peak_mb(lambda: layer_errors(tmp_path / "m.onnx", out, _Rows(xs[n]), "input", activation_mb=mb))

    for what in ("quantize", "sensitivity"):
        small, large = peak(64, 1, what), peak(512, 1, what)
        assert large / small < 1.3, (what, small, large)
        if method == "entropy" or what == "sensitivity":  # min-max holds reductions only: bounded either way
            unbounded = peak(512, 1000, what) / peak(64, 1000, what)
            assert unbounded > 3, (what, unbounded)


def test_strided_minmax_gives_the_one_pass_graph(tmp_path):
    """Min-max merges exact ranges: a graph calibrated in strides is the graph calibrated in one pass."""
    _conv_graph(tmp_path / "m.onnx")
    x = np.random.default_rng(2).standard_normal((96, 1, 32, 32)).astype(np.float32)
    quantize_int8(tmp_path / "m.onnx", tmp_path / "a.onnx", _Rows(x), "input", "minmax")
    quantize_int8(tmp_path / "m.onnx", tmp_path / "b.onnx", _Rows(x), "input", "minmax", activation_mb=0.5)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    one = layer_errors(tmp_path / "m.onnx", tmp_path / "a.onnx", _Rows(x), "input")
    strided = layer_errors(tmp_path / "m.onnx", tmp_path / "a.onnx", _Rows(x), "input", activation_mb=0.5)
    assert [r["tensor"] for r in one] == [r["tensor"] for r in strided]
    np.testing.assert_allclose([r["sqnr_db"] for r in one], [r["sqnr_db"] for r in strided], atol=1e-3)


def test_feature_spool_reads_back_what_was_written(tmp_path):
    x = np.random.default_rng(3).standard_normal((600, 2, 3)).astype(np.float32)
    spool, digests = gather(x, np.arange(600), tmp_path)  # dense: an array
    assert isinstance(spool, np.ndarray) and (digests == row_sha256(x)).all()

    class Lazy:  # any non-array column answering x[rows]
        shape = x.shape

        def __len__(self):
            return len(x)

        def __getitem__(self, rows):
            assert len(rows) <= 256
            return x[rows]

    rows = np.arange(0, 600, 2)
    spool, digests = gather(Lazy(), rows, tmp_path, "s")
    assert isinstance(spool, FeatureSpool) and spool.shape == (300, 2, 3)
    np.testing.assert_array_equal(spool[10:20], x[rows[10:20]])
    np.testing.assert_array_equal(spool[[3, 1]], x[rows[[3, 1]]])
    assert (digests == row_sha256(x[rows])).all()
    # apply: one call for a dense array, chunks of at most 256 rows otherwise, the same outputs
    calls = []

    def fn(c):
        calls.append(len(c))
        return c.reshape(len(c), -1).sum(1)

    np.testing.assert_array_equal(apply(fn, spool), x[rows].reshape(300, -1).sum(1))
    assert calls == [256, 44]
    calls.clear()
    np.testing.assert_array_equal(apply(fn, x[rows]), x[rows].reshape(300, -1).sum(1))
    assert calls == [300]


@pytest.fixture()
def run_copy(served_run, tiny_root, tmp_path):
    """The served tiny run copied under another runs folder, with its config and dataset (dense)."""
    from fdkd.pipeline.config import load_config
    from fdkd.pipeline.data.dataset import load_dataset
    from fdkd.pipeline.run_manifest import RunManifest

    cfg = load_config(None, tiny_overrides(tiny_root) + SERVED_OVERRIDES + [f"runs_dir={tmp_path}/runs"])
    shutil.copytree(served_run, cfg.run_dir)
    manifest = RunManifest.load(cfg.run_dir)
    return cfg, manifest, load_dataset(manifest.path_of("dataset"))


def _record_reads(monkeypatch) -> list[tuple[str, int]]:
    """Record (modality, rows) of every x[...] on a StreamRows."""
    calls: list[tuple[str, int]] = []
    orig = rows_mod.StreamRows.__getitem__

    def getitem(self, idx):
        out = orig(self, idx)
        calls.append((self.modality, len(out)))
        return out

    monkeypatch.setattr(rows_mod.StreamRows, "__getitem__", getitem)
    return calls


def _streamed(ds, how: str):
    """``ds`` streamed: over its arrays (``rows.streamed``) or from the on-disk dataset (``data.in_memory=false``)."""
    from fdkd.pipeline.data.dataset import load_dataset

    if how == "rows":
        return rows_mod.streamed(ds)
    out = load_dataset(ds.path, in_memory=False)
    assert all(rows_mod.is_streamed(x) for x in out.x.values())
    return out


def _without_latency(obj):
    if isinstance(obj, dict):
        return {k: _without_latency(v) for k, v in obj.items() if k not in ("ms_per_batch", "rows_per_s")}
    if isinstance(obj, list):
        return [_without_latency(v) for v in obj]
    return obj


@pytest.mark.parametrize("how", ["rows", "store"])
def test_stages_streamed_write_what_they_write_dense(run_copy, monkeypatch, how):
    """export, calibrate, quantize (sensitivity, the INT8 gate search) and validate on the streamed dataset: the same
    files as dense (validation.json: the same numbers), each needed row read once, at most a chunk at a time."""
    from fdkd.pipeline import run

    cfg, manifest, ds = run_copy
    rd = cfg.run_dir
    names = [artifacts.ONNX_FP32, artifacts.CALIB, artifacts.ONNX_INT8_CPU, artifacts.ONNX_INT8.format(method="minmax"),
             artifacts.SENSITIVITY, "int8_search.json", artifacts.TESTSET]
    results = {}
    for kind in ("dense", "streamed"):
        data = ds if kind == "dense" else _streamed(ds, how)
        calls = _record_reads(monkeypatch)
        ctx = run.Ctx(cfg, manifest, data)
        info = {}
        for stage in ("export", "calibrate", "quantize", "validate"):
            start = len(calls)
            outs = run.STAGES[stage][0](ctx)
            info[stage] = {o.name: o.extra for o in outs}
            info[stage]["reads"] = {m: sum(n for mm, n in calls[start:] if mm == m) for m in data.x}
        results[kind] = {"files": {n: artifacts.sha256_file(rd / n) for n in names},
                         "validation": _without_latency(json.loads((rd / artifacts.VALIDATION).read_text())),
                         "info": info, "largest": max((n for _, n in calls), default=0)}
        assert not list(rd.glob(".validate-*")) + list(rd.glob(".quantize-*")) + list(rd.glob(".int8-search-*"))
    dense, streamed = results["dense"], results["streamed"]
    assert streamed["files"] == dense["files"]
    assert streamed["validation"] == dense["validation"]
    assert streamed["info"]["export"][artifacts.ONNX_FP32]["parity"] == dense["info"]["export"][artifacts.ONNX_FP32][
        "parity"]
    assert 0 < streamed["largest"] <= rows_mod.CHUNK and dense["largest"] == 0
    # each stage reads the rows it needs once
    s, t = cfg.student_modality, cfg.teacher.modality
    n_val, n_test = len(ds.indices("val")), len(ds.indices("test"))
    n_unseen = len(ds.indices("test_unseen_accent")) if s == "audio" else 0
    calib_rows = len(np.load(rd / artifacts.CALIB)["rows"])
    reads = streamed["info"]
    assert reads["export"]["reads"] == {s: min(n_val, cfg.export.parity_rows), t: 0}
    assert reads["calibrate"]["reads"] == {s: calib_rows, t: 0}
    assert reads["quantize"]["reads"] == {s: calib_rows + n_val, t: 0}
    assert reads["validate"]["reads"] == {s: n_test + n_unseen, t: n_test}
    # the test set holds row indices and input hashes, never the inputs
    z = np.load(rd / artifacts.TESTSET)
    assert set(z.files) == {"rows", "sha256", "input_shape", "y", "ref_logits", "teacher_pred"}
    assert (z["rows"] == ds.indices("test")).all() and (z["sha256"] == row_sha256(ds.x[s][z["rows"]])).all()


def test_export_parity_reads_at_most_parity_rows(run_copy):
    from fdkd.pipeline import export
    from fdkd.pipeline.config import ExportConfig

    cfg, _, ds = run_copy
    data = rows_mod.streamed(ds)
    x = export.parity_rows(data, cfg.student_modality, 10)
    assert len(x) == 10 and data.x[cfg.student_modality].source.reads[cfg.student_modality] == 10
    info = export.run(cfg.run_dir / artifacts.STUDENT, x, cfg.run_dir / "p.onnx", ExportConfig(parity_rows=7))
    assert {r["rows"] for r in info["parity"].values()} == {7}


def test_calibration_rows_refuse_a_dataset_that_changed(run_copy, tmp_path):
    cfg, _, ds = run_copy
    x = ds.x[cfg.student_modality]
    calib = cfg.run_dir / artifacts.CALIB
    rows = np.load(calib)["rows"]
    got = CalibrationRows(calib, "input", rows_mod.streamed(ds).x[cfg.student_modality], tmp_path)
    np.testing.assert_array_equal(got.features[0 : len(rows)], x[rows])
    changed = x.copy()
    changed[rows[3]] *= 2
    with pytest.raises(ValueError, match=f"dataset row {rows[3]} does not hash as it did when the set was drawn"):
        CalibrationRows(calib, "input", changed)


def _engine_script(run_dir, dataset=None) -> str:
    return ("import json, sys\nfrom pathlib import Path\nfrom fdkd.pipeline.validate import validate_engine\n"
            f"e = validate_engine(Path({str(run_dir)!r}), Path({str(run_dir / 'student.onnx')!r}), "
            f"{None if dataset is None else repr(str(dataset))})\n"
            "assert 'torch' not in sys.modules, 'validate_engine imported torch'\n"
            "print(json.dumps({'metrics': e['metrics'], 'passed': e['gate']['passed']}))\n")


def test_validate_engine_rereads_the_test_rows_from_the_dataset_without_torch(run_copy, tmp_path):
    """The real path: the run's dataset from its manifest (or --dataset where it moved), re-read in chunks, no torch;
    a row whose recorded hash differs is refused, named."""
    cfg, manifest, ds = run_copy
    rd = cfg.run_dir
    # student.onnx stands in for an engine built later: an artifact with a build sidecar, gated like one
    (rd / "student.build.json").write_text(json.dumps({"precision": "fp32", "onnx": "student.onnx"}))
    proc = subprocess.run([sys.executable, "-c", _engine_script(rd)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads(proc.stdout.strip().splitlines()[-1])
    dense = json.loads((rd / artifacts.VALIDATION).read_text())
    onnx_entry = next(a for a in dense["artifacts"] if a["name"] == artifacts.ONNX_FP32)
    assert entry["passed"] and entry["metrics"]["accuracy"] == onnx_entry["metrics"]["accuracy"]
    assert entry["metrics"]["max_abs_logit"] == pytest.approx(onnx_entry["metrics"]["max_abs_logit"], abs=1e-6)
    # the dataset moved: named, and --dataset finds it
    data_path = manifest.path_of("dataset")
    if data_path.name == "dataset.json":  # a dataset folder (fdkd.pipeline.data.store): moved whole
        moved = tmp_path / "moved" / data_path.parent.name / data_path.name
        shutil.copytree(data_path.parent, moved.parent)
    else:
        moved = tmp_path / "moved" / data_path.name
        moved.parent.mkdir()
        shutil.copy2(data_path, moved)
    m = json.loads((rd / artifacts.MANIFEST).read_text())
    m["artifacts"]["dataset"]["path"] = str(tmp_path / "gone" / data_path.name)
    (rd / artifacts.MANIFEST).write_text(json.dumps(m))
    proc = subprocess.run([sys.executable, "-c", _engine_script(rd)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "is not there (moved?): pass --dataset PATH" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", _engine_script(rd, moved)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    # a test row whose recorded input hash differs from the dataset's: refused, named
    from fdkd.pipeline.validate import validate_engine

    z = dict(np.load(rd / artifacts.TESTSET))
    z["sha256"] = z["sha256"].copy()
    z["sha256"][4, 0] ^= 1
    artifacts.save_npz(rd / artifacts.TESTSET, z)
    m["artifacts"][artifacts.TESTSET]["sha256"] = artifacts.sha256_file(rd / artifacts.TESTSET)
    (rd / artifacts.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match=f"test row {int(z['rows'][4])} does not hash as validated"):
        validate_engine(rd, rd / "student.onnx", moved)


def test_verify_rows_rereads_the_test_rows(run_copy):
    """`fdkd verify --rows`: the test rows the run was validated on, re-read from its dataset, hash as recorded; a
    row that does not is a problem naming it (exit 1)."""
    from typer.testing import CliRunner

    from fdkd.pipeline.cli import app

    cfg, _, _ = run_copy
    rd = cfg.run_dir
    result = CliRunner().invoke(app, ["verify", str(rd), "--rows"])
    n = len(np.load(rd / artifacts.TESTSET)["rows"])
    assert result.exit_code == 0 and f"the {n} test rows re-read from the dataset hash as validated" in " ".join(
        result.output.split()), result.output
    z = dict(np.load(rd / artifacts.TESTSET))
    z["sha256"] = z["sha256"].copy()
    z["sha256"][2, 5] ^= 1
    artifacts.save_npz(rd / artifacts.TESTSET, z)
    m = json.loads((rd / artifacts.MANIFEST).read_text())
    m["artifacts"][artifacts.TESTSET]["sha256"] = artifacts.sha256_file(rd / artifacts.TESTSET)
    (rd / artifacts.MANIFEST).write_text(json.dumps(m))
    result = CliRunner().invoke(app, ["verify", str(rd), "--rows"])
    assert result.exit_code == 1 and f"test row {int(z['rows'][2])} does not hash as validated" in " ".join(
        result.output.split()), result.output
