"""bench/compress/results.py: results.md section 3 is generated from the committed records, and its verdicts."""

from pathlib import Path

from bench.common import wrap_markdown
from bench.compress import results as cr
from bench.compress import run as compress

ROOT = Path(__file__).resolve().parents[1]


def _rec(artifact, file, batch, rows_per_s, acc, qdq=None, run="r1", family="x86-vnni", eager=1000.0):
    return {"run_id": run, "started": "2026-12-06T00:00:00Z", "command": "python -m bench.compress.run runs/x",
            "cpu": "Some CPU", "simd_flags": "avx2", "int8_kernels": family, "cores": 2, "threads": 2,
            "test_rows": 100, "mflop_per_sample": 1.0, "artifact": artifact, "file": file,
            "mode": {"qdq": qdq} if qdq else {}, "batch": batch, "accuracy": acc, "acc_delta_pt": 100 * (acc - 0.9),
            "rows_per_s": rows_per_s, "p50_ms": 1.0, "p99_ms": 2.0, "x_eager": rows_per_s / eager}


def _run(int8_speed, int8_acc, **kw):
    return [_rec("torch eager fp32", "student.pt", 64, 1000.0, 0.9, **kw),
            _rec("ORT student.onnx (FP32)", "student.onnx", 64, 2000.0, 0.9, **kw),
            _rec("ORT student.int8.minmax.onnx (emulated)", "student.int8.minmax.onnx", 64, 9000.0, 0.9,
                 qdq="emulated", **kw),
            _rec("ORT student.int8cpu.onnx", "student.int8cpu.onnx", 64, int8_speed, int8_acc, qdq="fused", **kw)]


def test_results_md_section_3_is_the_generated_one():
    text = (ROOT / "docs" / "results" / "compress.md").read_text()
    body = text.split(cr.BEGIN, 1)[1].split(cr.END, 1)[0]
    expected = wrap_markdown(cr.render(cr.load(cr.RECORDS)))
    assert body == expected, "run: python -m bench.compress.results --results docs/results/compress.md"


def test_every_committed_record_names_its_machine_and_command():
    for r in cr.load(cr.RECORDS):
        assert r["cpu"] and r["int8_kernels"], r
        assert r["command"].startswith(("python bench/compress.py", "python -m bench.compress.run")), r


def test_target_met_only_at_3x_within_half_a_point_and_emulated_rows_never_count():
    met = "\n".join(cr.verdict(_run(3100.0, 0.896)))
    assert "**met**" in met and "3.10x" in met and "Serve on this family: **`student.int8cpu.onnx`**" in met
    slow = "\n".join(cr.verdict(_run(2900.0, 0.9)))  # the emulated 9x row is a reference, not a served graph
    assert "**not met**" in slow and "2.90x" in slow
    lossy = "\n".join(cr.verdict(_run(5000.0, 0.89)))  # 1 point lost: fast, not within the target
    assert "**not met**" in lossy and "none is within 0.5 pt" in lossy
    assert "Serve on this family: **`student.onnx`**" in lossy


def test_each_family_gets_its_own_table_and_verdict():
    records = _run(1500.0, 0.9, run="a", family="x86") + _run(4100.0, 0.9, run="b")
    text = cr.render(records)
    assert "`x86`: Some CPU" in text and "`x86-vnni`: Some CPU" in text
    for graph in ("student.onnx", "student.int8cpu.onnx"):
        assert f"Serve on this family: **`{graph}`**" in text


def test_candidates_cover_every_graph_kind_in_table_order(tmp_path):
    for n in ("student.onnx", "student.fp16.onnx", "student.int8.minmax.onnx", "student.int8cpu.onnx"):
        (tmp_path / n).write_bytes(b"")
    got = [(path.name, opts) for _, path, opts in compress.candidate_graphs(tmp_path)]
    assert got == [("student.onnx", {}), ("student.fp16.onnx", {}), ("student.int8.minmax.onnx", {}),
                   ("student.int8.minmax.onnx", {"emulate_qdq": True}), ("student.int8cpu.onnx", {})]
