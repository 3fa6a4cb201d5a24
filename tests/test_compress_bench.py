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


def _real(artifact, file, rows_per_s, acc, qdq=None, fp32=2000.0, eager=500.0, rounds=(0.9, 1.1)):
    r = _rec(artifact, file, 64, rows_per_s, acc, qdq=qdq, eager=eager)
    return r | {"student": "timm:resnet18", "input_shape": [3, 224, 224], "agree_fp32_pct": 99.0,
                "max_logit_err": 0.1, "x_fp32": rows_per_s / fp32,
                "x_fp32_rounds": [rows_per_s / fp32 * k for k in rounds],
                "x_eager_rounds": [rows_per_s / eager * k for k in rounds]}


def _real_run(int8_speed, int8_acc):
    return [_real("torch eager fp32", "student.pt", 500.0, 0.9), _real("ORT student.onnx (FP32)", "student.onnx",
                                                                        2000.0, 0.9),
            _real("ORT student.int8cpu.onnx", "student.int8cpu.onnx", int8_speed, int8_acc, qdq="fused")]


def test_real_target_needs_3x_ort_fp32_and_4x_eager_within_half_a_point_of_fp32():
    met = "\n".join(cr.real_verdict(_real_run(6200.0, 0.896)))
    assert "**met**" in met and "**3.10 (2.79-3.41)x** ONNX Runtime FP32" in met and "12.40" in met
    assert "not met" not in "\n".join(cr.real_verdict(_real_run(6200.0, 0.9)))
    assert "**not met**" in "\n".join(cr.real_verdict(_real_run(5800.0, 0.9)))  # 11.6x eager, 2.9x FP32
    lossy = "\n".join(cr.real_verdict(_real_run(9000.0, 0.89)))
    assert "**not met**" in lossy and "none is within 0.5 pt" in lossy


def test_real_table_shows_round_spread_and_agreement_and_the_old_tables_keep_their_columns():
    text = cr.render_run(_real_run(6200.0, 0.896))
    assert text.startswith("Student `timm:resnet18`, input 3x224x224")
    assert "top-1 agree % vs FP32" in text and "| 3.10 (2.79-3.41) |" in text and "b64 x ORT FP32" in text
    assert "x ORT FP32" not in cr.render_run(_run(3100.0, 0.9)) and "b64 p99 ms" in cr.render_run(_run(3100.0, 0.9))


def test_op_table_puts_each_graphs_ops_side_by_side():
    base = {"started": "2026-12-07T20:00:00Z", "command": "python -m bench.compress.op_profile r a b", "cpu": "C",
            "load_avg_1m": 1.0, "student": "timm:resnet18", "batch": 64, "threads": None, "calls": 5}
    ops = [base | {"graph": "student.onnx", "total_ms": 100.0, "ops": [["Conv", 90.0, 20], ["Relu", 10.0, 17]]},
           base | {"graph": "student.int8cpu.onnx", "total_ms": 40.0,
                   "ops": [["QLinearConv", 30.0, 19], ["Conv", 8.0, 1], ["QuantizeLinear", 2.0, 1]]}]
    text = cr.render_ops(ops)
    assert "| Conv | 90.00 (20) | 8.00 (1) |" in text and "| QLinearConv | - | 30.00 (19) |" in text
    assert "| all nodes | 100.0 | 40.0 |" in text


def test_interleaved_rounds_time_every_candidate_in_turn():
    calls = []
    cands = [(name, "", (lambda b, n=name: calls.append(n)), {}) for name in "AB"]
    out = compress.interleaved(cands, None, reps=4, rounds=2)
    assert [len(t) for t in out["A"]] == [2, 2] and len(out["B"]) == 2
    assert calls == ["A", "B"] + ["A"] * 2 + ["B"] * 2 + ["A"] * 2 + ["B"] * 2  # one warm-up each, then rounds


def test_real_section_is_the_generated_one():
    if not cr.REAL_RECORDS.exists():
        return
    text = (ROOT / "docs" / "results" / "compress.md").read_text()
    body = text.split(cr.REAL_BEGIN, 1)[1].split(cr.REAL_END, 1)[0]
    ops = cr.load(cr.OPS_RECORDS) if cr.OPS_RECORDS.exists() else []
    assert body == wrap_markdown(cr.render_real(cr.load(cr.REAL_RECORDS), ops))


def test_generated_image_task_is_seeded_and_paired(tmp_path):
    from bench.compress import real_data

    real_data.make(tmp_path / "a", 3, 3)
    real_data.make(tmp_path / "b", 3, 3)
    for f in ("img2.png", "clip2.wav", "audio-teacher.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "audio-teacher.csv").read_text().splitlines()[1:3] == [
        "clip0.wav,img0.png,class0", "clip1.wav,img1.png,class1"]
    assert (tmp_path / "a" / "image-teacher.csv").read_text().splitlines()[3] == "img2.png,clip2.wav,class2"
