"""Science v3's bookkeeping (no training): teacher first, resume by key, doubled budgets, the generated tables."""

import json

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
