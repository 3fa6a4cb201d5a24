"""Science v3's bookkeeping (no training): teacher first, resume by key, doubled budgets, the generated tables."""

import json

import numpy as np
import pytest

from bench.science import v3 as science_v3
from bench.science import v3_tables as science_v3_tables


def _bench(tmp_path, *extra):
    return science_v3.Bench(science_v3.parse_args(["--records", str(tmp_path / "r.jsonl"), "--out",
                                                   str(tmp_path / "runs"), "--seeds", "2",
                                                   "--cells", "avdigits:fraction=0.05,avdigits:fraction=1", *extra]))


def _cands(rows, test, val=None, flat=True):
    return [{"name": r, "method": science_v3.CANDIDATES[r][0], "val_acc": (val or {}).get(r, 0.5),
             "judge_acc": 0.5, "test_acc": test[r], "epoch": 3, "lead_judge_pt": 0.0, "se_judge_pt": 1.0,
             "passes_margin": False, "curve": [0.5], "flat": flat} for r in rows]


def _run_rec(rows, test, shipped, winner="none", val=None, flat=True):
    return {"winner": winner, "margin_se": 2.0, "judge_rows": 50, "shipped_test_acc": shipped,
            "candidates": _cands(rows, test, val, flat), "labels": {"train_rows": 100, "train_labelled": 5},
            "seconds": 1.0, "cpu_seconds": 2.0, "threads": 1}


def test_teacher_first_then_every_seed_then_the_doubled_attempt_where_a_curve_is_not_flat(tmp_path):
    b = _bench(tmp_path)
    (teacher,) = b.wanted()
    assert teacher["kind"] == "teacher"
    b.land(teacher, {"val_acc": 0.99, "test_acc": 0.98, "seconds": 1, "cpu_seconds": 1})
    assert b.wanted() == [teacher]  # recorded, but its checkpoint is not on this disk: train it again
    b.teacher_path("avdigits").parent.mkdir(parents=True)
    b.teacher_path("avdigits").write_bytes(b"t")
    jobs = b.wanted()
    assert [(j["level"], j["seed"]) for j in jobs] == [(0.05, 0), (0.05, 1), (1.0, 0), (1.0, 1)]
    low = jobs[0]
    assert low["rows"] == science_v3.FRACTION_ROWS and jobs[2]["rows"] == science_v3.FULL_ROWS
    assert "data.labelled=0.05" in low["sets"] and "distill.method=auto" in low["sets"]
    cands = json.loads(next(s for s in low["sets"] if s.startswith("distill.auto.candidates=")).split("=", 1)[1])
    assert [c["name"] for c in cands] == science_v3.FRACTION_ROWS
    assert cands[-1]["set"] == {"teacher_shuffle": True}
    test = dict.fromkeys(low["rows"], 0.5)
    b.land(low, _run_rec(low["rows"], test, 0.5, flat=False))
    again = science_v3.Bench(b.args).wanted()  # a fresh process reads the same records
    assert (again[0]["seed"], again[0]["epochs"]) == (0, b.args.cap)  # not flat: doubled
    assert len(again) == 4
    few = low | {"seed": 1, "rows": ["none", "kd"]}  # a first attempt run with --rows none,kd
    b.land(few, _run_rec(few["rows"], test, 0.5, flat=False))
    rerun = next(j for j in science_v3.Bench(b.args).wanted() if (j["seed"], j["epochs"]) == (1, b.args.cap))
    assert rerun["rows"] == ["none", "kd"]  # the doubled attempt trains what the first trained, not every row
    cands = json.loads(next(s for s in rerun["sets"] if s.startswith("distill.auto.candidates=")).split("=", 1)[1])
    assert [c["name"] for c in cands] == ["none", "kd"]


def test_the_config_accepts_every_cells_candidates():
    from fdkd.pipeline.config import load_config

    for axis, level in (("fraction", 0.05), ("fraction", 1.0), ("noise", 0.2)):
        rows = science_v3.rows_for(axis, level)
        cfg = load_config(None, ["distill.method=auto", science_v3.candidates_override(rows),
                                 f"{science_v3.AXES[axis]}={level}"])
        assert [c.name for c in cfg.distill.auto.candidates] == rows
        for name, dcfg in cfg.distill.runs():
            method, sets = science_v3.CANDIDATES[name]
            assert dcfg.method == method
            if "teacher_shuffle" in sets:
                assert dcfg.teacher_shuffle


def test_tables_pair_by_seed_take_the_longer_run_and_pick_the_sweep_weight_on_validation(tmp_path):
    rows = science_v3.FRACTION_ROWS
    recs = []
    for seed in range(3):
        test = {r: 0.5 for r in rows} | {"none": 0.40 + 0.01 * seed, "self-training": 0.45, "fd w=10": 0.80,
                                         "fd": 0.70, "fd shuffled teacher": 0.50 + 0.01 * seed}
        val = {"fd w=10": 0.9, "fd": 0.8, "fd w=100": 0.7}
        recs.append({"kind": "run", "preset": "avdigits", "axis": "fraction", "level": 0.05, "seed": seed,
                     "epochs": 20, **_run_rec(rows, test, 0.78, winner="fd w=10", val=val), "machine": _machine()})
        full = {r: 0.85 for r in science_v3.FULL_ROWS}
        recs.append({"kind": "run", "preset": "avdigits", "axis": "fraction", "level": 1.0, "seed": seed,
                     "epochs": 20, **_run_rec(science_v3.FULL_ROWS, full, 0.85), "machine": _machine()})
    # seed 0's doubled run supersedes its first attempt
    longer = dict(recs[0], epochs=40, shipped_test_acc=0.81)
    recs.append(longer)
    text = science_v3_tables.render(recs, None)
    rec = science_v3_tables.Records(recs)
    cell = ("avdigits", "fraction", 0.05)
    assert rec.picked(cell) == "fd w=10"
    assert rec.row(cell, science_v3_tables.PICKED) == pytest.approx({0: 80.0, 1: 80.0, 2: 80.0})
    assert rec.row(cell, science_v3_tables.SHIPPED) == pytest.approx({0: 81.0, 1: 78.0, 2: 78.0})
    assert "| fd (val-picked w) | 80.0 ± 0.0 (n=3) | **+39.0 [" in text  # 80 - (40, 41, 42) paired
    targets = text.split("Targets at 5 % labels")[1].split("####")[0]
    assert "| avdigits | 5 % | 79.0 ± 1.7 (n=3) |" in targets
    # -6 [-10.3, -1.7] vs none at 100 %: the interval straddles -3; +38 [+31, +45] over none at 5 %: met
    assert "(undecided at n=3)" in targets and "(met)" in targets and "(not met)" not in targets
    assert "`auto` shipped: `fd w=10` 3x." in text
    # fd 70 against kd and pseudo at 50 each seed (sd 0: a zero-width interval, above), against its shuffled
    # teacher at 50 + seed (70 - 50..52: above); a row with no records is "-"
    fd_rows = text.split("against `kd`, `pseudo` and its own shuffled teacher")[1].split("####")[0]
    assert ("| avdigits, 5 % labelled | **+20.0 [+20.0, +20.0]** (above) | **+20.0 [+20.0, +20.0]** (above) | **+19.0"
            in fd_rows)
    assert "| avdigits, 100 % labelled | +0.0 [+0.0, +0.0] (not separated) | - |" in fd_rows  # no pseudo there


def test_fd_against_kd_and_pseudo_says_below_and_not_separated():
    recs = []
    for seed in range(3):
        test = {r: 0.5 for r in science_v3.FRACTION_ROWS} | {"fd": 0.60, "kd": 0.70 + 0.01 * seed,
                                                             "pseudo": [0.50, 0.70, 0.60][seed]}
        recs.append({"kind": "run", "preset": "avdigits", "axis": "fraction", "level": 0.05, "seed": seed,
                     "epochs": 20, **_run_rec(science_v3.FRACTION_ROWS, test, 0.6), "machine": _machine()})
    table = science_v3_tables.fd_table(science_v3_tables.Records(recs))
    (row,) = [r for r in table if r.startswith("| avdigits")]
    kd, pseudo, shuffled = row.rstrip(" |").split(" | ")[1:4]
    assert kd.endswith("(below)") and kd.startswith("**-11.0 [-13.5, -8.5]**") and pseudo.endswith("(not separated)")
    assert shuffled.endswith("(above)")  # fd 60 vs the shuffled teacher's 50


def _machine():
    return {"cpu": "Test CPU", "cores": 2, "flags": ["avx2"], "device": "cpu", "torch": "2.13.0", "rev": "x"}


def test_noise_transfer_table_pairs_each_seeds_gap_across_levels_and_says_growth_only_past_its_interval():
    rows = science_v3.rows_for("noise", 0.0)
    recs = []
    for level, (kd_gap, fd_gap) in ((0.0, (1.0, 2.0)), (0.4, (30.0, 2.0))):
        for seed in range(3):
            test = {r: 0.6 for r in rows} | {"kd": 0.6 + (kd_gap + seed) / 100, "fd": 0.6 + (fd_gap + seed % 2) / 100}
            recs.append({"kind": "run", "preset": "avdigits", "axis": "noise", "level": level, "seed": seed,
                         "epochs": 20, **_run_rec(rows, test, 0.6), "machine": _machine()})
    table = science_v3_tables.transfer_table(science_v3_tables.Records(recs))
    assert table[0] == "| avdigits: row minus its shuffled teacher | 0 % | 40 % | growth, 40 % minus 0 % |"
    kd = next(r for r in table if r.startswith("| kd |"))
    fd = next(r for r in table if r.startswith("| fd |"))
    # kd: seed gaps (1, 2, 3) then (30, 31, 32): growth +29 every seed, a zero-width interval
    assert kd.endswith("| **+29.0 [+29.0, +29.0]** (grows) |")
    # fd: the same gaps (2, 3, 2) at both levels: growth 0
    assert fd.endswith("| +0.0 [+0.0, +0.0] (no growth detected) |")
    assert science_v3_tables.transfer_table(science_v3_tables.Records(recs[:3])) == []  # one level: no growth


def test_the_prototype_part_has_its_own_records_rows_and_budget(tmp_path):
    b = science_v3.Bench(science_v3.parse_args(["--records", str(tmp_path / "r.jsonl"), "--out",
                                                str(tmp_path / "runs"), "--part", "prototype"]))
    b.land(b.teacher_job("avdigits"), {"val_acc": 0.99, "test_acc": 0.98, "seconds": 1, "cpu_seconds": 1})
    b.teacher_path("avdigits").parent.mkdir(parents=True)
    b.teacher_path("avdigits").write_bytes(b"t")
    # a main-part record of the same key does not stand in for the prototype part's
    main = {k: v for k, v in b.run_job_for("avdigits", "noise", 0.4, 0, 40).items() if k != "part"}
    b.file.land({k: main[k] for k in ("kind", "preset", "axis", "level", "seed", "epochs")},
                _run_rec(science_v3.NOISE_ROWS, dict.fromkeys(science_v3.NOISE_ROWS, 0.5), 0.5), [], {})
    jobs = b.wanted()  # the teacher is found whatever part landed it
    assert [(j["level"], j["seed"], j["epochs"]) for j in jobs][:4] == [(0.4, 0, 40), (0.4, 1, 40), (0.4, 2, 40),
                                                                       (0.0, 0, 40)]
    assert len(jobs) == 9 and all(j["part"] == "prototype" for j in jobs)
    assert jobs[0]["rows"] == science_v3.PROTOTYPE_ROWS
    cands = json.loads(next(s for s in jobs[0]["sets"] if s.startswith("distill.auto.candidates=")).split("=", 1)[1])
    assert cands[-1] == {"name": "kd prototype teacher", "method": "kd", "set": {"teacher_prototype": True}}
    assert jobs[0]["sets"][-1].endswith("prototype")  # its own run folder
    rows = science_v3.PROTOTYPE_ROWS
    b.land(jobs[0], _run_rec(rows, dict.fromkeys(rows, 0.5), 0.5, flat=False))
    again = science_v3.Bench(b.args).wanted()
    assert (again[0]["seed"], again[0]["epochs"]) == (0, 80)  # not flat at 40: the doubled budget
    assert len(science_v3_tables.Records(b.file.records).runs) == 1  # the main part's tables never see it


def _row_rec(seed, right: dict, test_curve: dict, half0, voice=None):
    """A row record: each candidate's [epochs, rows] correctness packed as the bench packs it."""
    return {"kind": "run", "preset": "avdigits", "axis": "noise", "level": 0.4, "seed": seed, "epochs": 3,
            "winner": "none", "margin_se": 2.0, "judge_rows": len(half0), "shipped_test_acc": 0.5,
            "half0": science_v3.pack(half0), "val_voice": voice,
            "candidates": [{"name": n, "method": "none" if n == "none" else "kd", "val_acc": 0.5, "judge_acc": 0.5,
                            "test_acc": 0.5, "epoch": 0, "lead_judge_pt": 0.0, "se_judge_pt": 1.0,
                            "passes_margin": False, "curve": [0.5] * 3, "flat": True,
                            "val_right": [science_v3.pack(e) for e in m], "test_curve": test_curve[n]}
                           for n, m in right.items()], "machine": _machine(), "cpu_seconds": 1.0}


def test_replay_old_and_new_rules_from_row_records():
    from bench.science import v3_replay

    n = 400
    half0 = np.arange(n) < n // 2
    base = np.zeros((3, n), bool)
    base[:, ::2] = True  # none: 50 % at every epoch
    # lucky: epoch 1 perfect on half 0 only, none's elsewhere: whichever half picks it, the other judges it
    lucky = base.copy()
    lucky[1, : n // 2] = True
    # steady: 3 more rows right than none on each half at every epoch (1.5 points): lead / SE = 1.7 on one half's
    # 200 rows (inside the 2-SE margin), 2.5 on all 400 (past it)
    steady = base.copy()
    steady[:, [1, 3, 5, n // 2 + 1, n // 2 + 3, n // 2 + 5]] = True
    rec = _row_rec(0, {"none": base, "lucky": lucky, "steady": steady},
                   {"none": [0.5] * 3, "lucky": [0.5, 0.55, 0.5], "steady": [0.51, 0.58, 0.52]}, half0)
    half = v3_replay.replay(rec, "half")
    cross = v3_replay.replay(rec, "crossfit")
    assert half["winner"] == "none" and half["test_acc"] == 0.5
    assert cross["winner"] == "steady" and cross["test_acc"] == 0.51  # its best epoch on all of validation: 0
    assert half["judged"]["lucky"] == cross["judged"]["lucky"] == 0.5  # the lucky epoch never judges its pickers
    assert cross["judged"]["steady"] == pytest.approx(steady[0].mean())
    assert v3_replay.replay(rec, "crossfit, voice halves") is None  # no voices recorded
    # voice halves cut across rows 0-199: lucky's epoch 1 is right on rows both voice halves hold, a gain the
    # other half confirms (100 - 50 = +25 points on the judged rows)
    voiced = dict(rec, val_voice=(np.arange(n) % 20).tolist())
    by_voice = v3_replay.replay(voiced, "crossfit, voice halves")
    assert by_voice["winner"] == "lucky" and by_voice["judged"]["lucky"] == pytest.approx(0.75)


def test_replay_of_summary_records_reproduces_the_recorded_winner_and_refuses_crossfit():
    from bench.science import v3_replay

    rec = {"kind": "run", "seed": 0, "margin_se": 2.0, "winner": "kd", "shipped_test_acc": 0.9,
           "candidates": [{"name": "none", "judge_acc": 0.7, "test_acc": 0.6, "lead_judge_pt": 0, "se_judge_pt": 0},
                          {"name": "kd", "judge_acc": 0.8, "test_acc": 0.9, "lead_judge_pt": 10, "se_judge_pt": 3},
                          {"name": "fd", "judge_acc": 0.9, "test_acc": 0.95, "lead_judge_pt": 20,
                           "se_judge_pt": 11}]}
    got = v3_replay.replay(rec, "half")
    assert got["winner"] == "kd" and got["test_acc"] == 0.9  # fd leads more, but inside 2 SE
    assert v3_replay.replay(rec, "crossfit") is None


def test_voice_halves_keep_each_voice_in_one_half_and_balance_rows():
    from bench.science import v3_replay

    voice = np.repeat(np.arange(10), [5, 9, 3, 7, 4, 6, 8, 2, 5, 1])
    a, b = v3_replay.voice_halves(voice, seed=3)
    assert not set(voice[a]) & set(voice[b]) and len(a) + len(b) == len(voice)
    assert abs(len(a) - len(b)) <= 9
    assert np.array_equal(v3_replay.voice_halves(voice, seed=3)[0], a)


def test_tables_say_where_the_40_epoch_rule_was_not_applied():
    rows = science_v3.FULL_ROWS
    recs = [{"kind": "run", "preset": "avmnist", "axis": "fraction", "level": 1.0, "seed": s, "epochs": 20,
             **_run_rec(rows, dict.fromkeys(rows, 0.9), 0.9, flat=s != 1), "machine": _machine()} for s in range(3)]
    text = science_v3_tables.render(recs, None)
    assert "**the 40-epoch rule was not applied**: seed(s) 1 had a curve not flat at 20 epochs" in text


def test_prototype_table_splits_kd_into_instance_and_label_correction():
    rows = science_v3.PROTOTYPE_ROWS
    recs = []
    for seed in range(3):
        test = {"none": 0.8, "kd": 0.94 + 0.01 * seed, "kd prototype teacher": 0.93 + 0.01 * seed,
                "kd shuffled teacher": 0.70}
        recs.append({"kind": "run", "part": "prototype", "preset": "avdigits", "axis": "noise", "level": 0.4,
                     "seed": seed, "epochs": 40, **_run_rec(rows, test, 0.9), "machine": _machine()})
    rec = science_v3_tables.Records(recs, part="prototype")
    (row,) = [r for r in science_v3_tables.prototype_table(rec) if r.startswith("| avdigits")]
    # kd minus prototype: +1 every seed; prototype minus shuffled: 23, 24, 25
    assert "| **+1.0 [+1.0, +1.0]** | **+24.0 [+21.5, +26.5]** | 0/12 |" in row
    one = science_v3_tables.Records(recs[:1], part="prototype")
    assert "| +1.0 (n=1) | +23.0 (n=1) |" in science_v3_tables.prototype_table(one)[2]
    assert science_v3_tables.Records(recs).runs == {}  # the main part's tables never read them
    budget = science_v3_tables.budget_table(rec, [("kd", "kd prototype teacher")])
    assert budget[2] == "| 40 % | 40 | 3 | **+1.0 [+1.0, +1.0]** | 0/3 | 0/3 |"
