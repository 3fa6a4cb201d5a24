"""``distill.method: auto``: which candidate ships, decided on validation rows that did not pick its epoch.

Used by the distill stage (``fdkd.pipeline.distill``); reads nothing from disk. The rule:

1. The validation split is halved, stratified by class and seeded (``halve_validation``): the *select* half picks
   every candidate's best epoch (``fdkd.pipeline.train.fit``), the *judge* half compares the candidates. The same rows
   never pick both the epoch and the candidate, so a candidate's lucky epoch on those rows cannot carry it.
2. On the judge half, each candidate is compared with the plain ``none`` candidate (training alone) row by row:
   d_i = 1[candidate right] - 1[none right]. Its lead is mean(d) and the lead's paired standard error is
   sd(d) / sqrt(n) (the normal approximation behind McNemar's test).
3. A candidate may replace ``none`` only when its lead exceeds ``distill.auto.margin_se`` standard errors (default
   2: with no true difference, a candidate passes about 2.3 % of the time, one-sided). Of the candidates that
   pass, the best judge accuracy ships (list order on ties); if none passes, ``none`` ships. A tie (identical
   predictions: sd 0) or a lead inside the margin ships ``none``.

Test accuracy is reported beside every candidate and never used to choose.
"""

from __future__ import annotations

import math

import numpy as np


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


def paired_lead(right: np.ndarray, baseline_right: np.ndarray) -> tuple[float, float]:
    """(lead in accuracy, its paired standard error) of one candidate over the baseline on the same rows."""
    d = np.asarray(right, np.float64) - np.asarray(baseline_right, np.float64)
    n = len(d)
    if n < 2:
        return float(d.mean()) if n else 0.0, math.inf
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))


def select(candidates: list[dict], margin_se: float) -> dict:
    """The decision. Each candidate: name, method, plain (the training-alone baseline), ``judge_right`` (bool per
    judge row), val_acc (select half, best epoch), test_acc, epoch, and anything else to report."""
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
            "baseline": baseline["name"], "margin_se": margin_se, "judge_rows": len(base_right),
            "margin_val_pt": 100 * (w["judge_acc"] - b["judge_acc"]),
            "margin_test_pt": 100 * (w["test_acc"] - b["test_acc"]),
            "candidates": rows}
