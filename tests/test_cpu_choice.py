"""Which graph ``fdkd serve`` (artifact auto) runs on a CPU: the fastest validated for this host's INT8 kernel family.

Every test starts from a copy of the session's finished tiny run (``served_run``: real ONNX graphs on disk, a real
validation.json), sets the validated throughputs it needs (validation times 5 calls per graph, too few to test
an ordering on), and asks the real loader (``fdkd.serving.model.load_model``, which the app's lifespan calls).
"""

from __future__ import annotations

import json
import shutil

import pytest

from fdkd.serving.model import INT8_MIN_SPEEDUP, NotServable, cpu_choice, load_model
from fdkd.serving.runtime.cpu_isa import int8_kernels

FP32, CPU8, TRT8 = "student.onnx", "student.int8cpu.onnx", "student.int8.minmax.onnx"
OTHER_FAMILY = "x86" if int8_kernels() == "x86-vnni" else "x86-vnni"


@pytest.fixture
def run_copy(served_run, tmp_path):
    dst = tmp_path / "runs" / "served"
    shutil.copytree(served_run, dst)
    return dst


def _edit(run_dir, fn):
    v = json.loads((run_dir / "validation.json").read_text())
    for a in v["artifacts"]:
        fn(a)
    (run_dir / "validation.json").write_text(json.dumps(v))


def _fail_gate(name):
    """An ``_edit`` that marks every entry of artifact ``name`` as failing its gate."""
    def edit(a):
        if a["name"] == name:
            a["gate"]["passed"] = False
    return edit


def _speeds(run_dir, **rows_per_s):
    """Validated throughputs: FP32 1000 rows/s, each INT8 graph 500 unless told (``student_int8cpu_onnx=...``)."""
    speeds = {FP32: 1000.0, CPU8: 500.0, TRT8: 500.0} | {k.replace("_", "."): v for k, v in rows_per_s.items()}

    def set_speed(a):
        if a["name"] in speeds and "metrics" in a:
            a["metrics"]["rows_per_s"] = speeds[a["name"]]
    _edit(run_dir, set_speed)


def _manifest(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


def test_fp32_when_no_int8_graph_is_faster_enough(run_copy):
    _speeds(run_copy, **{"student_int8cpu_onnx": 1000 * INT8_MIN_SPEEDUP * 0.99})
    choice = cpu_choice(run_copy, _manifest(run_copy))
    assert choice["artifact"] == FP32
    cand = {c["name"]: c for c in choice["candidates"]}
    assert cand[CPU8]["servable"] and "< 1.2 x FP32's 1000" in cand[CPU8]["why"]
    assert load_model(run_copy).artifact == FP32


def test_fastest_int8_graph_validated_here_is_served(run_copy):
    _speeds(run_copy, student_int8cpu_onnx=3000.0, student_int8_minmax_onnx=2000.0)
    model = load_model(run_copy)
    assert model.artifact == CPU8
    assert model.mode["qdq"] == "fused" and model.mode["int8_kernels"] == int8_kernels()
    _speeds(run_copy, student_int8cpu_onnx=1500.0, student_int8_minmax_onnx=2000.0)  # the TensorRT graph, fused
    assert load_model(run_copy).artifact == TRT8


def test_int8_validated_on_another_kernel_family_is_never_picked(run_copy):
    """A run validated on a VNNI machine and copied to an AVX2 one (or back): its fused INT8 verdicts do not hold."""
    _speeds(run_copy, student_int8cpu_onnx=5000.0, student_int8_minmax_onnx=5000.0)

    def move(a):
        if a.get("mode", {}).get("qdq") == "fused":
            a["mode"]["int8_kernels"] = OTHER_FAMILY
    _edit(run_copy, move)
    choice = cpu_choice(run_copy, _manifest(run_copy))
    assert choice["artifact"] == FP32
    for c in choice["candidates"][1:]:
        assert not c["servable"] and f"this CPU's is {int8_kernels()}" in c["why"], c
    assert load_model(run_copy).artifact == FP32


def test_int8_that_failed_its_fused_gate_or_was_only_emulated_is_not_picked(run_copy):
    _speeds(run_copy, student_int8cpu_onnx=5000.0, student_int8_minmax_onnx=4000.0)

    _edit(run_copy, _fail_gate(CPU8))
    assert load_model(run_copy).artifact == TRT8

    def drop_fused_trt8(a):  # keep only the emulated (reference) entry: the server would run it fused
        if a["name"] == TRT8 and a.get("mode", {}).get("qdq") == "fused":
            a["mode"]["qdq"] = "emulated"
    _edit(run_copy, drop_fused_trt8)
    choice = cpu_choice(run_copy, _manifest(run_copy))
    assert choice["artifact"] == FP32
    assert "failed its validation gate" in next(c for c in choice["candidates"] if c["name"] == CPU8)["why"]


def test_tampered_int8_graph_is_not_picked(run_copy):
    _speeds(run_copy, student_int8cpu_onnx=5000.0)
    (run_copy / CPU8).write_bytes((run_copy / CPU8).read_bytes() + b"\0")
    choice = cpu_choice(run_copy, _manifest(run_copy))
    assert choice["artifact"] == FP32
    assert next(c for c in choice["candidates"] if c["name"] == CPU8)["why"] == "sha256 mismatch with the manifest"
    assert load_model(run_copy).artifact == FP32


def test_fp32_refusal_is_the_runs_refusal_even_with_a_faster_int8(run_copy):
    """student.onnx is the source of every graph: a failed FP32 gate is not routed around by serving INT8."""
    _speeds(run_copy, student_int8cpu_onnx=5000.0)

    _edit(run_copy, _fail_gate(FP32))
    with pytest.raises(NotServable, match=f"{FP32} failed its validation gate"):
        load_model(run_copy)


def test_int8_timed_at_another_batch_is_not_compared(run_copy):
    _speeds(run_copy, student_int8cpu_onnx=5000.0)

    def batch(a):
        if a["name"] == CPU8 and "metrics" in a:
            a["metrics"]["batch"] = 1
    _edit(run_copy, batch)
    choice = cpu_choice(run_copy, _manifest(run_copy))
    assert choice["artifact"] == FP32
    assert "not comparable" in next(c for c in choice["candidates"] if c["name"] == CPU8)["why"]


def test_the_choice_follows_the_thread_count_served(run_copy):
    """--threads N serves what was validated at N: INT8 judged at another count does not count."""
    _speeds(run_copy, student_int8cpu_onnx=5000.0)
    validated = next(a for a in json.loads((run_copy / "validation.json").read_text())["artifacts"]
                     if a["name"] == FP32)["mode"]["threads"]
    other = (validated or 1) + 1

    def fp32_at_other(a):
        if a["name"] == FP32:
            a["mode"]["threads"] = other
    _edit(run_copy, fp32_at_other)
    model = load_model(run_copy, threads=other)
    assert model.artifact == FP32 and model.mode["threads"] == other
