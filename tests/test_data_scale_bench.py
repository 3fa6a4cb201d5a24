"""bench.data.scale at a tiny N: the generator is seeded and deterministic, the PSS sampler sees a child's memory,
and one tiny bench size writes a record per stage with the fields the results table reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bench.data import generate, pss, scale

TINY = scale.TINY["shape"]


def test_generator_is_seeded_deterministic_and_decodable(tmp_path):
    from fdkd.pipeline.data.kinds import ColumnSpec, decode

    a = generate.pair_files(5, 0, generate.Shape(size=32, seconds=0.2))
    assert a == generate.pair_files(5, 0, generate.Shape(size=32, seconds=0.2))
    assert a[1] != generate.pair_files(5, 1, generate.Shape(size=32, seconds=0.2))[1]  # another seed, other bytes
    label, jpg, wav = a
    assert label == 5 and jpg[:3] == b"\xff\xd8\xff" and wav[:4] == b"RIFF"
    img = decode(ColumnSpec("image", size=(32, 32), channels=3), jpg)
    assert img.shape == (3, 32, 32) and img.dtype == np.uint8
    clip = decode(ColumnSpec("audio", sample_rate=16000, clip_samples=3200), wav)
    assert clip.shape == (3200,) and np.abs(clip).max() > 0.1
    _, _, png = generate.pair_files(3, 0, generate.Shape(size=32, student="depth"))
    levels = decode(ColumnSpec("depth", size=(32, 32)), png)
    assert levels.dtype == np.uint16 and levels.shape == (1, 32, 32)
    assert len(np.unique(levels)) > 256  # a full 16-bit map, not 8 bits scaled

    one, two = tmp_path / "one", tmp_path / "two"
    generate.write_pairs(one, 12, shape=TINY, workers=1)
    generate.write_pairs(two, 12, shape=TINY, workers=2)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert len(files) == 25  # 12 pairs + the manifest
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)
    assert (one / "pairs.csv").read_text().splitlines()[1] == "teacher/000000.jpg,student/000000.wav,c0"


def test_pss_sampler_sees_a_child_allocating(tmp_path):
    code = "import time, numpy as np; a = np.ones(200 * 2**20 // 8); time.sleep(1.5)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    sampler = pss.TreeSampler(os.getpid(), interval=0.05).start()
    proc.wait()
    sampler.stop()
    kb, procs, count = sampler.peak()
    assert procs >= 2 and count > 5  # this process and the child, found through /proc/<pid>/task/*/children
    own = min(s[1] for s in sampler.samples if s[2] == 1) if any(s[2] == 1 for s in sampler.samples) else 0
    assert kb - own > 150 * 1024  # the child's 200 MB were counted in the tree
    t = time.monotonic()
    assert sampler.peak(t, t + 1) == (None, 0, 0)


def test_tiny_bench_writes_a_record_per_stage(tmp_path):
    records = tmp_path / "records.jsonl"
    out = subprocess.run([sys.executable, "-m", "bench.data.scale", "--tiny", "--sizes", "24",
                          "--work", str(tmp_path / "work"), "--records", str(records)],
                         capture_output=True, text=True, timeout=600, cwd=scale.ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    recs = [json.loads(line) for line in records.read_text().splitlines()]
    stages = [r["stage"] for r in recs]
    assert stages[0] == "generate" and stages.index("raw_decode") > stages.index("run")
    for s in ("data", "teacher", "distill", "export", "calibrate", "quantize", "validate", "run"):
        assert s in stages, (s, stages, out.stdout[-2000:])
    run = next(r for r in recs if r["stage"] == "run")
    assert run["status"] == "done" and run["n"] == 24 and run["tiny"] is True
    assert run["peak_pss_mib"] > 50 and run["procs"] >= 1 and run["disk_run_mb"] > 0
    for r in recs:
        assert {"cpu", "flags", "load", "commit", "path", "kind", "session", "wall_s"} <= set(r), r
        assert len(r["load"]) == 3
    teacher = next(r for r in recs if r["stage"] == "teacher")
    assert teacher["rows"] == teacher["splits"]["train"] and teacher["samples_per_s"] > 0
    assert teacher["peak_pss_mib"] > 0 and teacher["disk_dataset_mb"] > 0
    raw = next(r for r in recs if r["stage"] == "raw_decode")
    assert raw["rows"] == 24 and raw["samples_per_s"] > 0
    if run["path"] == "stream":
        loader = next(r for r in recs if r["stage"] == "loader")
        assert loader["rows"] == 24 and loader["workers"] == 2
    assert not (tmp_path / "work" / "sources" / "audio-24-tiny").exists()  # sources deleted once measured
    assert "cpu:" in out.stdout and "reproduce: nice python -m bench.data.scale" in out.stdout
    # the tables: tiny records are not results; a non-tiny copy renders with the verdict lines
    doc = tmp_path / "doc.md"
    doc.write_text(f"head\n{scale.BEGIN}\n{scale.END}\ntail\n")
    full = tmp_path / "full.jsonl"
    full.write_text("".join(json.dumps(r | {"tiny": False}) + "\n" for r in recs))
    scale.write_tables(full, doc)
    text = doc.read_text()
    assert "| audio | 24 | teacher | done |" in text and "peak PSS of `fdkd run`'s tree" in text
    assert text.startswith("head\n") and text.endswith("tail\n")


@pytest.mark.parametrize("ratio_ok", [True, False])
def test_verdicts_read_the_targets(ratio_ok):
    base = {"kind": "audio", "status": "done", "load": [1.0, 1.0, 1.0]}
    recs = [base | {"n": 2000, "stage": "run", "peak_pss_mib": 1000.0},
            base | {"n": 50000, "stage": "run", "peak_pss_mib": 1100.0 if ratio_ok else 1500.0},
            base | {"n": 2000, "stage": "raw_decode", "samples_per_s": 100.0},
            base | {"n": 2000, "stage": "loader", "samples_per_s": 150.0, "workers": 2},
            base | {"n": 2000, "stage": "teacher", "peak_pss_mib": 500.0},
            base | {"n": 50000, "stage": "teacher", "peak_pss_mib": 1000.0}]
    lines = scale.verdicts(recs)
    assert "teacher 500 -> 1000 MiB (2.00x)" in lines[1]
    del lines[1]
    assert ("50,000 pairs): met" in lines[0]) == ratio_ok and "< 3 GB (2,861 MiB) at 50,000: met" in lines[0]
    assert "150 %" in lines[1] and ": met on this machine" in lines[1]
