"""The accents benchmark's tables (no training): grouping, the target count, and the seed-paired differences."""


import pytest

from bench.accents import run as accents


def _rec(label, seed, acc, unseen):
    return {"label": label, "sets": [], "seed": seed, "in_domain_acc": acc, "unseen_accent_acc": unseen,
            "gap_pt": round(acc - unseen, 2), "unseen_accents": ["en-gb-scotland", "en-029"], "winner": "none",
            "candidates": [{"name": "none", "test_acc": acc / 100, "test_unseen_accent_acc": unseen / 100}],
            "wall_s": 200.0, "cpu_s": 390.0, "fresh_data": False, "stages_skipped": [], "cpu_model": "cpu",
            "cpu_flags": ["avx2"], "git_rev": "abc"}


def test_paired_rows_difference_the_same_seeds_only():
    new, ref = accents.PAIRS[0]
    records = [_rec(ref, 0, 94.0, 86.0), _rec(ref, 1, 95.0, 87.0), _rec(ref, 2, 93.0, 88.0),
               _rec(new, 0, 93.0, 89.0), _rec(new, 1, 94.0, 91.0), _rec(new, 2, 94.0, 90.0), _rec(new, 7, 50.0, 50.0)]
    text = accents.render(records)
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {new} minus {ref}")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "3"  # seed 7 has no partner
    assert cells[2].startswith("-0.3 [") and cells[3].startswith("+3.0 [") and cells[4].startswith("-3.3 [")
    lo, hi = (float(x) for x in cells[3].split("[")[1].rstrip("]").split(","))
    assert lo < 3.0 < hi and hi - lo == pytest.approx(2 * 4.303 * 1.0 / 3**0.5, abs=0.15)  # t(2) * sd / sqrt(n)
    # the target counts seeds with in-domain >= 93 and gap <= 5
    (cfg_row,) = [line for line in text.splitlines() if line.startswith("| C2 | 0,1,2,7 |")]
    assert "3/4 seeds" in cfg_row


def test_no_paired_table_without_two_shared_seeds():
    new, ref = accents.PAIRS[0]
    text = accents.render([_rec(ref, 0, 94.0, 86.0), _rec(new, 0, 93.0, 89.0), _rec(new, 1, 93.0, 89.0)])
    assert "Paired by seed" not in text


def test_a_run_that_failed_a_gate_is_shown_as_such():
    new, ref = accents.PAIRS[0]
    failed = {**_rec(ref, 2, 94.0, 86.0), "validation_passed": False, "gates_failed": ["student.int8.minmax.onnx"]}
    text = accents.render([_rec(ref, 0, 94.0, 86.0), failed])
    assert "fresh (validation gate failed: `student.int8.minmax.onnx`)" in text
