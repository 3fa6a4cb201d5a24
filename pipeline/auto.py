"""``distill.method: auto``: which candidate ships, judged on all of validation by cross-fitting, so that no row
judges an epoch it helped to pick.

Used by the distill stage (``fdkd.pipeline.distill``); reads nothing from disk. The rule:

1. Every candidate trains once; after every epoch its correctness on every validation row is kept
   (``fdkd.pipeline.train.fit``'s ``track_rows``). The epoch it ships is its best on all of validation.
2. The validation split is halved, stratified by class and seeded (``halve_validation``). Each half picks an epoch
   per candidate (its best accuracy on that half, the earlier on ties); the *other* half is judged at that epoch
   (``crossfit``). Every validation row is judged once, by an epoch that other rows picked: a candidate's lucky
   epoch on some rows cannot carry it, and the judgement uses all of validation (twice the rows of one judge half:
   the standard error shrinks by about 1/sqrt(2)).
3. On those judged rows, each candidate is compared with the plain ``none`` candidate (training alone) row by row:
   d_i = 1[candidate right] - 1[none right]. Its lead is mean(d) and the lead's paired standard error is
   sd(d) / sqrt(n) (the normal approximation behind McNemar's test).
4. A candidate may replace ``none`` only when its lead exceeds ``distill.auto.margin_se`` standard errors (default
   2: with no true difference, a candidate passes about 2.3 % of the time, one-sided). Of the candidates that
   pass, the best judged accuracy ships (list order on ties); if none passes, ``none`` ships. A tie (identical
   predictions: sd 0) or a lead inside the margin ships ``none``.

What this does not fix: validation and test hear different voices by design (the built-in data's splits are
voice-disjoint), and the validation voices can be easier than the test's. The judge is therefore not made "as hard
as test"; the dataset object carries no voice per row to group the halves by. docs/results.md section 1v3 reports
the judged-minus-test gap of both rules on the records.

Test accuracy is reported beside every candidate and never used to choose.
"""

from __future__ import annotations

import math

import numpy as np

ROWS_FILE = "auto.rows.{direction}.npz"


def save_rows(path, val: np.ndarray, test: np.ndarray, halves: tuple[np.ndarray, np.ndarray],
              tracked: dict[str, np.ndarray]) -> None:
    """Every candidate's [epochs, validation + test rows] correctness, the row ids and the halves (positions among
    the validation rows), as one npz: enough to replay any rule that picks epochs and candidates on validation."""
    arrays = {"val_rows": np.asarray(val), "test_rows": np.asarray(test), "half0": np.asarray(halves[0]),
              "half1": np.asarray(halves[1]), "candidates": np.array(list(tracked), dtype=str)}
    arrays.update({f"right{i}": np.asarray(m, bool) for i, m in enumerate(tracked.values())})
    np.savez_compressed(path, **arrays)


def load_rows(path) -> dict:
    """``save_rows``'s file back: {val_rows, test_rows, halves, candidates: {name: [epochs, rows] bool}}."""
    with np.load(path, allow_pickle=False) as z:
        names = [str(n) for n in z["candidates"]]
        return {"val_rows": z["val_rows"], "test_rows": z["test_rows"], "halves": (z["half0"], z["half1"]),
                "candidates": {n: z[f"right{i}"] for i, n in enumerate(names)}}


def halve_validation(y: np.ndarray, val_rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(select rows, judge rows): each class's validation rows shuffled (seeded) and cut in two, the odd one to
    select. A class with a single validation row gives it to both halves (nothing else is possible)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA070]))
    val_rows = np.asarray(val_rows)
    select, judge = [], []
    for c in np.unique(y[val_rows]):
        rows = rng.permutation(val_rows[y[val_rows] == c])
        if len(rows) == 1:
            select.append(rows)
            judge.append(rows)
            continue
        half = (len(rows) + 1) // 2
        select.append(rows[:half])
        judge.append(rows[half:])
    return np.sort(np.concatenate(select)), np.sort(np.concatenate(judge))


def crossfit(right_by_epoch: np.ndarray, halves: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """(judged correctness per validation position, [epoch picked on half 0, epoch picked on half 1]).

    ``right_by_epoch``: [epochs, validation rows] booleans; ``halves``: two disjoint position arrays covering the
    rows. Each half picks the epoch with its best accuracy (the earliest on ties) and the other half's rows are
    judged at that epoch."""
    right = np.asarray(right_by_epoch, bool)
    if right.ndim != 2 or right.shape[0] == 0:
        raise ValueError(f"crossfit needs [epochs, rows] correctness with at least one epoch, got shape {right.shape}")
    judged = np.zeros(right.shape[1], bool)
    picked = []
    for own, other in (halves, halves[::-1]):
        own, other = np.asarray(own), np.asarray(other)
        e = int(np.argmax(right[:, own].mean(1))) if len(own) else 0  # argmax: the first maximum
        picked.append(e)
        judged[other] = right[e, other]
    return judged, picked


def paired_lead(right: np.ndarray, baseline_right: np.ndarray) -> tuple[float, float]:
    """(lead in accuracy, its paired standard error) of one candidate over the baseline on the same rows."""
    d = np.asarray(right, np.float64) - np.asarray(baseline_right, np.float64)
    n = len(d)
    if n < 2:
        return float(d.mean()) if n else 0.0, math.inf
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))


def select(candidates: list[dict], margin_se: float) -> dict:
    """The decision. Each candidate: name, method, plain (the training-alone baseline), ``judge_right`` (bool per
    judged row: ``crossfit``'s), val_acc (all of validation, the shipped epoch), test_acc, epoch, and anything else
    to report."""
    baseline = next(c for c in candidates if c["method"] == "none" and c["plain"])
    base_right = np.asarray(baseline["judge_right"], bool)
    rows, winner = [], baseline
    for c in candidates:
        right = np.asarray(c["judge_right"], bool)
        lead, se = paired_lead(right, base_right)
        passes = c is not baseline and lead > 0 and lead > margin_se * se
        row = {k: v for k, v in c.items() if k not in ("judge_right", "plain")}
        row.update(judge_acc=float(right.mean()), lead_judge_pt=100 * lead,
                   se_judge_pt=100 * se if math.isfinite(se) else None, passes_margin=bool(passes))
        rows.append(row)
        if passes and (winner is baseline or row["judge_acc"] > rows[candidates.index(winner)]["judge_acc"]):
            winner = c
    w = rows[candidates.index(winner)]
    b = rows[candidates.index(baseline)]
    return {"winner": winner["name"], "winner_method": winner["method"], "winner_plain": winner is baseline,
            "baseline": baseline["name"], "judge": "crossfit", "margin_se": margin_se, "judge_rows": len(base_right),
            "margin_val_pt": 100 * (w["judge_acc"] - b["judge_acc"]),
            "margin_test_pt": 100 * (w["test_acc"] - b["test_acc"]),
            "candidates": rows}
