"""Replays of ``method: auto``'s rules on science v3's records, without retraining (issue 31).

Used by ``bench.science.v3_tables`` (the replay table of docs/results/science-v3.md); reads records only. Two
kinds of record:

- **Summary records** (every run before issue 31): each candidate's select-half validation curve, its judge-half
  accuracy, lead and standard error at the select-half epoch, its test accuracy there. They replay the old rule
  (``half``: the select half picks the epochs, the judge half the candidate) exactly, which checks the recorded
  winner; they cannot replay a cross-fitted rule: the judge half's correctness at any other epoch, and the select
  half's row by row, were never kept.
- **Row records** (``val_right``: every candidate's correctness on every validation row after every epoch, the
  halves, the test accuracy per epoch, each validation row's voice): any rule that chooses on validation replays
  exactly, the old one included, with ``fdkd.pipeline.auto``'s own functions.

Rules (margin 2 standard errors each; the candidate ships at the epoch the rule names, its test accuracy there):

- ``half``: the old rule. Epoch on half 0 (the select half), judgement on half 1; ships at the half-0 epoch.
- ``crossfit``: the new rule (``auto.crossfit``). Each half judged at the epoch the other half picked, all of
  validation judged; ships at the best epoch on all of validation.
- ``crossfit, voice halves``: as ``crossfit`` with the halves drawn by voice (each voice's rows in one half; voices
  shuffled by the run's seed and dealt to the smaller half): the rows judged are heard in voices the epoch choice
  never heard, as the test's are. Measured, not shipped: the dataset object carries no voice per row.
"""

from __future__ import annotations

import numpy as np

from fdkd.pipeline import auto

RULES = ("half", "crossfit", "crossfit, voice halves")


def unpack(text: str, n: int) -> np.ndarray:
    """A record's packed booleans (``bench.science.v3.pack``) back, the first ``n``."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)


def has_rows(rec: dict) -> bool:
    return all("val_right" in c and c.get("test_curve") for c in rec["candidates"]) and "half0" in rec


def voice_halves(voice: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two position arrays over the validation rows, each voice's rows in one half: voices in a seeded order, each
    dealt to the half with fewer rows so far (the first on a tie)."""
    voice = np.asarray(voice)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x701C]))
    halves: list[list[int]] = [[], []]
    for v in rng.permutation(np.unique(voice)):
        small = 0 if len(halves[0]) <= len(halves[1]) else 1
        halves[small] += np.flatnonzero(voice == v).tolist()
    return np.sort(np.array(halves[0], int)), np.sort(np.array(halves[1], int))


def replay(rec: dict, rule: str, margin_se: float | None = None) -> dict | None:
    """What ``rule`` ships from one record: {winner, test_acc (the shipped candidate's at the shipped epoch),
    judged (candidate -> judged accuracy), judged_test (candidate -> test accuracy at the judged epochs)}.
    None where the record cannot replay the rule (a summary record and a rule other than ``half``)."""
    margin = rec["margin_se"] if margin_se is None else margin_se
    if not has_rows(rec):
        if rule != "half" or rec.get("judge") == "crossfit":
            return None
        return _replay_summary(rec, margin)
    n = len(rec["val_voice"]) if rec.get("val_voice") else rec["judge_rows"]
    half0 = unpack(rec["half0"], n)
    halves = (np.flatnonzero(half0), np.flatnonzero(~half0))
    if rule == "crossfit, voice halves":
        if not rec.get("val_voice"):
            return None
        halves = voice_halves(np.asarray(rec["val_voice"]), rec["seed"])
    cands, judged_test = [], {}
    for c in rec["candidates"]:
        right = np.stack([unpack(e, n) for e in c["val_right"]])
        curve = c["test_curve"]
        if rule == "half":
            e = int(np.argmax(right[:, halves[0]].mean(1)))
            judge, ship_epoch = right[e, halves[1]], e
            judged_test[c["name"]] = curve[e]
        else:
            judge, picked = auto.crossfit(right, halves)
            ship_epoch = int(np.argmax(right.mean(1)))
            sizes = [len(halves[1]), len(halves[0])]  # epoch picked on half k judges the other half's rows
            judged_test[c["name"]] = (sizes[0] * curve[picked[0]] + sizes[1] * curve[picked[1]]) / sum(sizes)
        cands.append({"name": c["name"], "method": c["method"], "plain": c["name"] == "none", "judge_right": judge,
                      "val_acc": float(right[ship_epoch].mean()), "test_acc": curve[ship_epoch],
                      "epoch": ship_epoch})
    out = auto.select(cands, margin)
    win = next(c for c in out["candidates"] if c["name"] == out["winner"])
    return {"winner": out["winner"], "test_acc": win["test_acc"],
            "judged": {c["name"]: c["judge_acc"] for c in out["candidates"]}, "judged_test": judged_test}


def _replay_summary(rec: dict, margin: float) -> dict:
    """The old rule from the recorded judge-half numbers: passes where lead > 0 and lead > margin x SE; of those
    the best judge accuracy (list order on ties); else ``none``."""
    winner = next(c for c in rec["candidates"] if c["name"] == "none")
    for c in rec["candidates"]:
        lead, se = c["lead_judge_pt"], c["se_judge_pt"]
        passes = c["name"] != "none" and se is not None and lead > 0 and lead > margin * se
        if passes and (winner["name"] == "none" or c["judge_acc"] > winner["judge_acc"]):
            winner = c
    return {"winner": winner["name"], "test_acc": winner["test_acc"],
            "judged": {c["name"]: c["judge_acc"] for c in rec["candidates"]},
            "judged_test": {c["name"]: c["test_acc"] for c in rec["candidates"]}}
