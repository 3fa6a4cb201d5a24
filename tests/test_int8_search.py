"""The INT8 gate search (a graph that fails on validation is searched for one that passes), paired gate decisions,
and a run that ships what passed: exit 0 with the failed precision reported, never served or built."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import binomtest

from fdkd.pipeline import gate_stats
from tests.conftest import tiny_overrides

# a student that learns (the tiny runs elsewhere predict one class, where agreement is trivially 100 %), rigged:
# percentile calibration clipping at 98 % of each activation's histogram, a drop gate of 0 points decided on the
# point value, and no other calibrator to fall back on, so only keeping layers in float can pass
LEARNS = ["threads=1", "data.avdigits.max_images=400", "teacher.modality=audio", "teacher.model.width=4",
          "teacher.optim.epochs=1", "distill.method=none", "distill.student.width=8", "distill.optim.epochs=8",
          "quantize.calib_samples=128", "quantize.calib_methods=[percentile]", "build.int8_method=percentile",
          "quantize.search_calibrators=[]", "validate.gates.decide=point"]
RIGGED = ["quantize.percentile=98", "validate.gates.int8_max_acc_drop_pt=0", "quantize.search_max_float_frac=1"]
HOPELESS = ["quantize.percentile=90.5", "quantize.search_max_float_frac=0.2", "quantize.search_max_passes=3"]


def _run(root, name, sets, *extra):
    args = [a for s in tiny_overrides(root) + [f"name={name}", *LEARNS, *sets] for a in ("--set", s)]
    return subprocess.run([sys.executable, "-m", "fdkd", "run", *args, *extra], capture_output=True, text=True,
                          env=dict(os.environ, FDKD_QUIET="1", COLUMNS="400"), cwd=root)


@pytest.fixture(scope="module")
def rigged(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    proc = _run(root, "s", RIGGED)
    return root, root / "runs" / "s", proc


def test_paired_drop_test_matches_an_exact_binomial_test():
    ref = np.array([1] * 80 + [0] * 10, bool)
    art = ref.copy()
    art[:2] = False  # 2 of 90 rows lost: 2.2 points against a 1-point limit
    d = gate_stats.drop_test(ref, art, 1.0, 0.05)
    p0 = 0.5 * (1 + 0.01 * 90 / 2)
    assert (d["rows_lost"], d["rows_gained"]) == (2, 0) and d["value"] == pytest.approx(200 / 90)
    assert d["p_value"] == pytest.approx(binomtest(2, 2, p0, alternative="greater").pvalue)
    assert d["passed"] and d["drop_lower_pt"] < 1.0  # two rows on 90 cannot show a drop beyond 1 point
    art[:12] = False
    d = gate_stats.drop_test(ref, art, 1.0, 0.05)
    assert not d["passed"] and d["drop_lower_pt"] > 1.0
    assert d["p_value"] == pytest.approx(binomtest(12, 12, 0.5 * (1 + 0.9 / 12), alternative="greater").pvalue)
    # within the limit by its point value: never failed, whatever the split
    assert gate_stats.drop_test(ref, ref, 0.0, 0.05)["passed"]


def test_agreement_test_and_the_small_split_warning():
    a = gate_stats.agree_test(3, 90, 97.0, 0.05)
    assert a["p_value"] == pytest.approx(binomtest(3, 90, 0.03, alternative="greater").pvalue) and a["passed"]
    assert not gate_stats.agree_test(1, 90, 100.0, 0.05)["passed"]  # 100 %: any changed row fails
    assert not gate_stats.agree_test(20, 90, 97.0, 0.05)["passed"]
    warn = gate_stats.resolution_warning(90, 1.0, 0.05, "INT8 gate")
    assert warn and "90 rows" in warn and "cannot tell a drop of 2 points" in warn
    assert gate_stats.resolution_warning(20000, 1.0, 0.05, "INT8 gate") is None


def test_rigged_gate_keeps_the_worst_layers_in_float_and_passes(rigged):
    from fdkd.pipeline.int8_search import ranked_layers
    from fdkd.pipeline.search_record import SEARCHED, build_source

    root, run_dir, proc = rigged
    assert proc.returncode == 0, proc.stderr[-3000:]
    search = json.loads((run_dir / "int8_search.json").read_text())
    trt = next(g for g in search["graphs"] if g["target"] == "tensorrt")
    worst = ranked_layers(json.loads((run_dir / "sensitivity.json").read_text())["layers"])
    first, *rest = trt["attempts"]
    assert first["step"] == "plain" and not first["passed"], "the rig must fail the plain graph"
    assert rest and rest[0]["float_layers"] == worst[:1]  # the layer sensitivity.json ranks worst, first
    for k, a in enumerate(rest, 1):  # one more layer at a time, in sensitivity's order, on the validation split
        assert a["step"] == "float layers" and a["float_layers"] == worst[:k]
    assert trt["passed"] and rest[-1]["passed"] and trt["chosen"] == SEARCHED
    assert trt["float_layers"] == rest[-1]["float_layers"] and trt["split"] == "val"
    assert build_source(run_dir, "percentile") == SEARCHED  # the build takes the graph that passed
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(run_dir / SEARCHED)).metadata_props}
    assert meta["fdkd.search.float_layers"].split(",") == trt["float_layers"]
    nodes = {n.name: n for n in onnx.load(str(run_dir / SEARCHED)).graph.node}
    producers = {o: n for n in nodes.values() for o in n.output}
    # kept in float: its weights are float initializers, not dequantized INT8 (an activation it shares with a
    # quantized consumer, such as a residual Add, still arrives through that consumer's Q/DQ pair)
    convs = [n for n in trt["float_layers"] if nodes[n].op_type in ("Conv", "Gemm", "MatMul")]
    assert convs
    for layer in convs:
        assert all(producers.get(i) is None for i in nodes[layer].input[1:]), layer
    result = json.loads((run_dir / "validation.json").read_text())
    assert result["int8_search"] == search
    entry = next(a for a in result["artifacts"] if a["name"] == SEARCHED and a["mode"]["qdq"] == "emulated")
    assert "gate" in entry  # gated on test like every artifact
    report = (run_dir / "report.md").read_text()
    assert "## INT8 gate search (validation split)" in report and worst[0] in report


def test_nothing_passes_within_budget_ships_the_rest_and_refuses_the_int8_graphs(rigged):
    from fdkd.pipeline.search_record import SEARCHED, build_source
    from fdkd.serving.model import NotServable, load_model

    root, run_dir, _ = rigged
    proc = _run(root, "s", HOPELESS)  # the same run: only quantize and validate are redone
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 0, out[-3000:]
    result = json.loads((run_dir / "validation.json").read_text())
    search = result["int8_search"]
    for g in search["graphs"]:
        assert not g["passed"] and g["chosen"] is None and 1 <= len(g["attempts"]) <= 3
        assert g["budget"]["max_float_layers"] == int(0.2 * g["budget"]["quantized_layers"])
    assert not (run_dir / SEARCHED).exists() and build_source(run_dir, "percentile") is None
    plain = "student.int8.percentile.onnx"
    assert {plain, "student.int8cpu.onnx"} <= set(result["failed"]) and result["shipped"] and not result["passed"]
    for a in result["artifacts"]:
        if a["name"] in (plain, "student.int8cpu.onnx"):
            assert not a["gate"]["passed"] and any(c["metric"] == "int8_search" for c in a["gate"]["checks"])
    assert "run shipped what passed" in out and "failed, never served" in out and plain in out
    assert "no passing graph" in (run_dir / "report.md").read_text()
    for name in (plain, "student.int8cpu.onnx"):
        with pytest.raises(NotServable, match="failed its validation gate"):
            load_model(run_dir, name)
    assert load_model(run_dir).artifact == "student.onnx"  # auto: no INT8 graph outside its bar
    strict = _run(root, "s", HOPELESS, "--strict")
    assert strict.returncode == 1 and "--strict" in " ".join(strict.stderr.split())
