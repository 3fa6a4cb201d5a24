"""Gate decisions with the sampling error in view: exact binomial tests on the rows that changed.

A gate in points on a small split is a gate on single rows (90 rows: one row is 1.1 points). The user's
limits are kept, but a check fails only when the rows show, at one-sided level ``alpha``, that the true
value is beyond the limit; a value beyond the limit by chance alone passes. Never stricter than the point
rule: a point value within its limit always passes.

- Accuracy drop (paired): of the ``changed`` rows where exactly one of the reference and the artifact is
  right, ``lost`` are rows the artifact got wrong. Given ``changed``, the drop is
  ``changed / n * (2 p - 1)`` with ``p`` the chance that a changed row is a loss; the limit ``L`` points is
  ``p0 = (1 + L n / (100 changed)) / 2``. The check fails when ``P(Binomial(changed, p0) >= lost) < alpha``
  (an exact McNemar-type test against the limit, not against zero). ``drop_lower_pt`` is the matching
  one-sided Clopper-Pearson lower bound of the drop: it is above the limit exactly when the check fails.
- Agreement: ``disagree`` of ``n`` rows changed class; the limit ``A`` % is a disagreement rate
  ``1 - A / 100``; the check fails when ``P(Binomial(n, 1 - A / 100) >= disagree) < alpha``.

``smallest_failing_drop_pt`` is the least drop (every changed row a loss) a split of ``n`` rows can fail;
when it exceeds the limit by more than a point the split cannot tell a 1-point drop from noise, and the
report says so.
"""

from __future__ import annotations

import numpy as np


def _sf(k: int, n: int, p: float) -> float:
    """P(Binomial(n, p) >= k)."""
    from scipy.stats import binom

    if k <= 0:
        return 1.0
    return float(binom.sf(k - 1, n, p))


def _p0(limit_pt: float, n: int, changed: int) -> float:
    return min(1.0, 0.5 * (1.0 + limit_pt / 100.0 * n / changed))


def drop_test(ref_correct: np.ndarray, art_correct: np.ndarray, limit_pt: float, alpha: float) -> dict:
    """The paired accuracy-drop check: point drop, rows lost / gained, p-value against the limit, lower bound."""
    from scipy.stats import beta

    ref_correct, art_correct = np.asarray(ref_correct, bool), np.asarray(art_correct, bool)
    n = len(ref_correct)
    lost = int((ref_correct & ~art_correct).sum())
    gained = int((~ref_correct & art_correct).sum())
    changed = lost + gained
    drop = 100.0 * (lost - gained) / max(n, 1)
    if changed == 0:
        p_value, lower = 1.0, 0.0
    else:
        p_value = _sf(lost, changed, _p0(limit_pt, n, changed))
        p_lo = float(beta.ppf(alpha, lost, changed - lost + 1)) if lost else 0.0  # one-sided Clopper-Pearson
        lower = 100.0 * changed / n * (2 * p_lo - 1)
    return {"value": drop, "rows": n, "rows_lost": lost, "rows_gained": gained, "p_value": p_value,
            "drop_lower_pt": lower, "passed": bool(p_value >= alpha)}


def agree_test(disagree: int, n: int, limit_pct: float, alpha: float) -> dict:
    """The agreement check: ``disagree`` of ``n`` rows changed class against at most ``100 - limit_pct`` %."""
    p_value = _sf(disagree, n, 1.0 - limit_pct / 100.0) if limit_pct < 100 else (1.0 if disagree == 0 else 0.0)
    return {"value": 100.0 * (n - disagree) / max(n, 1), "rows": n, "rows_changed": int(disagree),
            "p_value": p_value, "passed": bool(p_value >= alpha)}


def smallest_failing_drop_pt(n: int, limit_pt: float, alpha: float) -> float | None:
    """The least drop (rows lost, none gained) that fails the paired drop check on ``n`` rows; None: none can."""
    for lost in range(1, n + 1):
        if _sf(lost, lost, _p0(limit_pt, n, lost)) < alpha:
            return 100.0 * lost / n
    return None


def resolution_warning(n: int, limit_pt: float, alpha: float, what: str) -> str | None:
    """A warning when ``n`` rows cannot tell a drop 1 point beyond ``limit_pt`` from noise, else None."""
    least = smallest_failing_drop_pt(n, limit_pt, alpha)
    if least is not None and least <= limit_pt + 1.0:
        return None
    can = f"the smallest drop it can fail is {least:.2f} points" if least is not None else "no drop can fail it"
    return (f"{what}: {n} rows (one row = {100 / n:.2g} points) cannot tell a drop of {limit_pt + 1:g} points from "
            f"noise at alpha={alpha:g} (limit {limit_pt:g}; {can}); a larger test split decides finer")
