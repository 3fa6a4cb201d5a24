"""The science benchmark's bookkeeping (no training): resume by record key, headroom, derived runs, statistics."""

import json
import sys
from pathlib import Path

import pytest

from bench.science import v2 as science
from bench.science import v2_tables as science_tables


def _bench(tmp_path, *extra):
    return science.Bench(science.parse_args(["--records", str(tmp_path / "r.jsonl"), "--presets", "avdigits",
                                             "--out", str(tmp_path / "runs"), "--seeds", "3", *extra]))


def _rec(**kw):
    return {"val_acc": 0.5, "test_acc": 0.5, "best_epoch": 1, "val_curve": [0.5], "seconds": 1.0, "cpu_seconds": 10.0,
            "threads": 1, **kw}


def test_runs_resume_from_the_records_and_follow_the_headroom_rule(tmp_path):
    b = _bench(tmp_path)
    (teacher,) = b.wanted("teacher")
    assert teacher["row"] == "teacher" and b.wanted("headroom") == []  # nothing before the teacher
    b.land(teacher, _rec(val_acc=0.9, teacher_sha256="aa"))
    ckpt = b.teacher_path("avdigits", "image->audio")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"teacher")
    assert b.wanted("teacher") == []
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1
    (none0,) = b.wanted("headroom")
    b.land(none0, _rec(val_acc=0.6))
    fixed = science.Bench(b.args).wanted("fixed")  # a fresh process sees the same records
    assert len(fixed) == len(science.ROWS) * 3 - 1  # none seed 0 already landed
    assert all(f"seed={j['seed']}" in j["sets"] and f"distill.optim.epochs={b.args.epochs}" in j["sets"]
               for j in fixed)
    # a teacher without headroom (student alone within HEADROOM_PT of it): the direction's rows are skipped
    c = _bench(tmp_path / "other")
    c.land(c.wanted("teacher")[0], _rec(val_acc=0.605))
    c.land(c.wanted("headroom")[0], _rec(val_acc=0.6))
    assert c.headroom("avdigits", "image->audio") is False and c.wanted("fixed") == []


def test_derived_runs_wall_time_sweep_pick_and_doubling(tmp_path):
    b = _bench(tmp_path, "--rows", "none,fd,fd w=10,fd w=100", "--epochs", "10", "--conv-epochs", "20",
               "--conv-cap", "40")
    b.land(b.wanted("teacher")[0], _rec(val_acc=0.9, cpu_seconds=30.0))
    b.land(b.wanted("headroom")[0], _rec(cpu_seconds=20.0))
    for j in b.wanted("fixed"):
        val = {"fd w=10": 0.8}.get(j["row"], 0.5)
        b.land(j, _rec(val_acc=val, cpu_seconds={"fd": 30.0}.get(j["row"], 20.0)))
    assert b.picked_weight("avdigits", "image->audio") == "fd w=10"
    derived = b.wanted("derived")
    wall = [j for j in derived if j["row"] == science.WALL]
    assert len(wall) == 3 and all(j["epochs"] == 10 * (30 + 30) // 20 for j in wall)  # teacher + fd CPU over none's
    picked = [j for j in derived if j["row"] == science.PICKED]
    assert len(picked) == 3 and all("distill.fd.w_low=10" in j["sets"] for j in picked)
    for j in derived:
        b.land(j, _rec(flat=j["row"] != "none"))
    again = b.wanted("derived")
    assert {(j["row"], j["epochs"]) for j in again} == {("none", 40)}  # only the non-flat runs are doubled


def test_plateau_rule_and_preset_knobs():
    assert science.is_flat([0.5, 0.6, 0.7, 0.8, 0.8, 0.805])
    assert not science.is_flat([0.5, 0.6, 0.7, 0.8, 0.8, 0.82])
    name, sets = science.parse_preset("avblend:shared=0.5")
    assert name == "avblend" and "data.avblend.shared=0.5" in sets and "data.source=avblend" in sets
    with pytest.raises(SystemExit, match="unknown preset"):
        science.parse_preset("nope")


def test_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    m, h, n = science_tables.paired({0: 3.0, 1: 5.0, 2: 7.0}, {0: 2.0, 1: 3.0, 2: 4.0})  # differences 1, 2, 3
    assert (m, n) == (2.0, 3) and h == pytest.approx(4.302652729911275 / 3 ** 0.5)
    assert science_tables.paired({0: 1.0}, {0: 0.0}) is None


def test_tables_generate_from_records_and_call_transfer_only_above_every_control(tmp_path):
    records = []
    gains = {"none": 0.0, "none+LS": 0.0, "kd": 5.0, "kd shuffled teacher": 0.0, "fd": 1.0, "fd shuffled teacher": 1.0}
    machine = {"cpu": "x", "cores": 2, "flags": ["avx2"], "device": "cpu", "torch": "t"}
    base = {"preset": "avdigits", "direction": "image->audio", "epochs": 15, "machine": machine, "sets": []}
    records.append({**base, "row": "teacher", "seed": 0, "budget": "teacher", **_rec(val_acc=0.99)})
    for row, g in gains.items():
        for s in range(5):
            acc = (80 + g + (s % 2) * 0.3 * (row == "kd")) / 100
            records.append({**base, "row": row, "seed": s, "budget": "fixed", **_rec(val_acc=0.8, test_acc=acc),
                            **({"label_smoothing": 0.3, "teacher_entropy": 1.2, "label_smoothing_temperature": 4.0}
                               if row == "none+LS" else {})})
    path = tmp_path / "results.md"
    path.write_text(f"# Results\n\n{science_tables.BEGIN}\nold\n{science_tables.END}\n\ntail\n")
    rec_path = tmp_path / "r.jsonl"
    rec_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    science_tables.main(["--records", str(rec_path), "--results", str(path)])
    text = path.read_text()
    assert text.startswith("# Results") and text.endswith("tail\n") and "\nold\n" not in text
    assert "| kd | 85.1 ± 0.2 (n=5) | **+5.1 [" in text
    assert "fixed budget, `kd`: **transfers knowledge**" in text
    assert "fixed budget, `fd`: knowledge transfer **not shown**" in text and "not above `fd shuffled teacher`" in text
    assert "smoothing strength: 0.300" in text


def _landed_run(runs: Path, val: float, test: float) -> str:
    """A finished `fd` run directory as bench/science/v2.py leaves it, and the log line it printed."""
    import torch

    run = runs / science.tag("avdigits", "image->audio", "fd", "fixed", 15, "s1")
    run.mkdir(parents=True)
    torch.save({"metrics": {"val_acc": val, "test_acc": test, "epoch": 1, "test_unseen_accent_acc": 0.5}},
               run / "student.pt")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"val_acc": v}) + "\n" for v in (0.4, val, 0.6)))
    return (f"[2026-11-28T14:21:00] avdigits image->audio fd seed 1 fixed 15 ep: val {100 * val:.1f} test 81.5 "
            "(12 cpu-s)")


def test_salvage_rebuilds_a_landed_run_from_its_directory_and_refuses_a_mismatch(tmp_path, monkeypatch):
    from bench.science import salvage as science_salvage

    machine = {"cpu": "x", "cores": 16, "flags": [], "device": "GPU", "torch": "t"}
    (tmp_path / "m.jsonl").write_text(json.dumps({"machine": machine}) + "\n")
    log = tmp_path / "science.log"
    log.write_text("CPU: ...\n" + _landed_run(tmp_path / "runs", 0.7, 0.815) + "\nFAILED something\n")
    out = tmp_path / "r.jsonl"
    argv = ["x", "--log", str(log), "--runs", str(tmp_path / "runs"), "--machine-from", str(tmp_path / "m.jsonl"),
            "--presets", "avdigits", "--records", str(out), "--set", "accel.device=cuda"]
    monkeypatch.setattr(sys, "argv", argv)
    science_salvage.main()
    science_salvage.main()  # idempotent: the key is already there
    (r,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (r["row"], r["seed"], r["budget"], r["epochs"]) == ("fd", 1, "fixed", 15)
    assert r["val_acc"] == 0.7 and r["test_acc"] == 0.815 and r["val_curve"] == [0.4, 0.7, 0.6]
    assert r["cpu_seconds"] == 12.0 and r["seconds"] is None and r["machine"] == machine and r["salvaged"]
    assert "distill.method=fd" in r["sets"] and "accel.device=cuda" in r["sets"] and "seed=1" in r["sets"]
    assert r["test_unseen_accent_acc"] == 0.5
    # a checkpoint that disagrees with its log line is refused, and nothing is appended
    log.write_text(_landed_run(tmp_path / "runs2", 0.7, 0.6) + "\n")
    monkeypatch.setattr(sys, "argv", [*argv[:4], str(tmp_path / "runs2"), *argv[5:-4], "--records",
                                      str(tmp_path / "r2.jsonl")])
    with pytest.raises(SystemExit, match="test_acc"):
        science_salvage.main()
    assert not (tmp_path / "r2.jsonl").exists()


def test_results_section_replaces_only_between_its_markers_and_refuses_a_file_without_them(tmp_path):
    from bench import common

    doc = tmp_path / "results.md"
    doc.write_text("head\n<!-- a:begin -->\nold\n<!-- a:end -->\ntail <!-- b:begin -->keep<!-- b:end -->\n")
    common.write_section(doc, "<!-- a:begin -->", "<!-- a:end -->", "\nnew\n")
    assert doc.read_text() == "head\n<!-- a:begin -->\nnew\n<!-- a:end -->\ntail <!-- b:begin -->keep<!-- b:end -->\n"
    before = doc.read_text()
    with pytest.raises(SystemExit, match="results.md has no <!-- c:begin -->"):
        common.write_section(doc, "<!-- c:begin -->", "<!-- c:end -->", "x")
    assert doc.read_text() == before


def test_a_teacher_recorded_elsewhere_is_retrained_once_and_the_tables_say_which_runs_used_it(tmp_path):
    b = _bench(tmp_path, "--rows", "none,fd")
    b.land(b.wanted("teacher")[0], _rec(val_acc=0.9, teacher_sha256="aa"))  # landed on another machine: no checkpoint
    (retrain,) = b.wanted("teacher")
    assert (retrain["row"], retrain["budget"], retrain["seed"]) == ("teacher", "retrained", 0)
    assert b.teacher_path("avdigits", "image->audio").parent.name in " ".join(retrain["sets"])  # same place, same name
    b.land(retrain, _rec(val_acc=0.88, test_acc=0.87, teacher_sha256="bb"))
    ckpt = b.teacher_path("avdigits", "image->audio")
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"teacher")
    assert b.wanted("teacher") == []
    b.land(b.wanted("headroom")[0], _rec(val_acc=0.6, teacher_sha256="aa"))  # none seed 0 ran before the retrain
    for j in b.wanted("fixed"):
        b.land(j, _rec(teacher_sha256="bb"))
    text = science_tables.render(b.records, None, "cmd")
    assert "trained again" in text and "88.0 % val" in text
    assert "5 runs had that teacher (none, fd)" in text  # none seeds 1-2 and fd seeds 0-2; not none seed 0
