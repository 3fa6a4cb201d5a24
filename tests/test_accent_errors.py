"""bench/accents/errors.py on a real finished run: per-accent and per-word tables that agree with validation.json."""

import json

from bench.accents import errors as accent_errors


def test_tables_match_the_runs_own_unseen_accent_accuracy(served_run):
    lines = accent_errors.errors(served_run)
    v = json.loads((served_run / "validation.json").read_text())["unseen_accent"]
    (head,) = [line for line in lines if line.startswith("### test_unseen_accent:")]
    assert head.startswith(f"### test_unseen_accent: {100 * v['test_unseen_accent_acc']:.1f} % of {v['rows']} clips")
    accents = [line.split("|")[1].strip() for line in lines if line.startswith("| en-gb-scotland |")
               or line.startswith("| en-029 |")]
    assert set(accents) <= set(v["accents"]) and accents
    words = [line for line in lines if line.startswith(("| zero |", "| eight |"))]
    assert len(words) == 4  # one row per word in each of the two splits
