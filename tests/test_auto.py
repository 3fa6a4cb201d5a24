"""``distill.method: auto``: every candidate trained on one loop; one ships only beyond the margin over ``none``."""

import json

import numpy as np
import pytest
import torch

from fdkd.pipeline import distill
from fdkd.pipeline.models.checkpoint import read_checkpoint
from fdkd.pipeline.train import accuracy, predict, tensors
from tests.test_distill import _cfg, _test_accuracy

CANDIDATES = "[{name: none, method: none}, {name: kd, method: kd}, {name: rigged, method: fd, set: {fd.w_low: 10}}]"


def _rigged_judge(monkeypatch, right_of):
    """Real training; then each candidate's cross-fitted correctness (one per validation row) replaced by
    ``right_of(name, n_rows)``."""
    trained = {}

    def judge(d, val, halves):
        trained[d.name] = d
        return np.asarray(right_of(d.name.split(":")[1], len(val)), bool), [0, 0]

    monkeypatch.setattr(distill, "_judge_right", judge)
    return trained


def _assert_ships(cfg, res, trained, name):
    m = res["student"]
    assert m["auto"]["judge"] == "crossfit"
    assert m["method"] == "auto" and m["auto"]["winner"] == name
    judge = {c["name"]: c["judge_acc"] for c in m["auto"]["candidates"]}
    vals = {c["name"]: c["val_acc"] for c in m["auto"]["candidates"]}
    assert m["val_acc"] == vals[name]
    assert m["auto"]["margin_val_pt"] == pytest.approx(100 * (judge[name] - judge["none"]))
    shipped = read_checkpoint(cfg.run_dir / "student.pt")["state_dict"]
    winner = trained[f"student:{name}"].student.state_dict()
    assert all(torch.equal(shipped[k], winner[k].cpu()) for k in shipped)


def _right(k: int, n: int) -> np.ndarray:
    """n judge rows, the first k right."""
    return np.arange(n) < k


def test_auto_ships_a_candidate_beyond_the_margin(tiny_cfg, tiny_teachers, tiny_dataset, monkeypatch):
    trained = _rigged_judge(monkeypatch, lambda name, n: _right(n if name == "rigged" else n // 4, n))
    cfg = _cfg(tiny_cfg, "auto-rigged", **{"distill.method": "auto", "distill.auto.candidates": CANDIDATES})
    _, res = distill.run(cfg)
    _assert_ships(cfg, res, trained, "rigged")
    cands = res["student"]["auto"]["candidates"]
    assert [c["name"] for c in cands] == ["none", "kd", "rigged"]
    assert [c["passes_margin"] for c in cands] == [False, False, True]
    # each candidate's recorded test accuracy is its own trained student's; the shipped one is student.pt's
    x, y = tensors(tiny_dataset)
    test = tiny_dataset.indices("test")
    for c in cands:
        student = trained[f"student:{c['name']}"].student
        assert c["test_acc"] == pytest.approx(accuracy(predict(student, x["audio"][test]), y[test]))
        assert 0 <= c["epoch"] < cfg.distill.optim.epochs
    assert res["student"]["test_acc"] == pytest.approx(_test_accuracy(cfg.run_dir / "student.pt", tiny_dataset))
    # every candidate trained in the same loop, each logged under its own name
    names = {json.loads(line)["direction"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()}
    assert names == {"student:none", "student:kd", "student:rigged"}


def test_auto_ships_none_when_a_candidate_leads_inside_the_margin(tiny_cfg, tiny_teachers, tiny_dataset,
                                                                  monkeypatch):
    # rigged is right on one judge row more than none: a real lead, far inside 2 standard errors
    trained = _rigged_judge(monkeypatch, lambda name, n: _right(n // 2 + (name == "rigged"), n))
    cfg = _cfg(tiny_cfg, "auto-near", **{"distill.method": "auto", "distill.auto.candidates": CANDIDATES})
    _, res = distill.run(cfg)
    _assert_ships(cfg, res, trained, "none")
    rigged = next(c for c in res["student"]["auto"]["candidates"] if c["name"] == "rigged")
    assert rigged["lead_judge_pt"] > 0 and not rigged["passes_margin"]
    # the same lead ships when the margin is set to zero standard errors
    trained = _rigged_judge(monkeypatch, lambda name, n: _right(n // 2 + (name == "rigged"), n))
    cfg = _cfg(tiny_cfg, "auto-near0", **{"distill.method": "auto", "distill.auto.candidates": CANDIDATES,
                                          "distill.auto.margin_se": "0"})
    _, res = distill.run(cfg)
    _assert_ships(cfg, res, trained, "rigged")


def test_auto_never_ships_a_student_that_tied_or_lost_to_training_alone(tiny_cfg, tiny_teachers, tiny_dataset,
                                                                         monkeypatch):
    trained = _rigged_judge(monkeypatch, lambda name, n: _right({"none": n // 2, "kd": n // 2, "rigged": 1}[name], n))
    cfg = _cfg(tiny_cfg, "auto-tie", **{"distill.method": "auto", "distill.auto.candidates": CANDIDATES,
                                        "distill.auto.margin_se": "0"})
    _, res = distill.run(cfg)
    _assert_ships(cfg, res, trained, "none")  # a tie with training alone goes to training alone
    assert res["student"]["auto"]["margin_val_pt"] == 0


def test_auto_judges_every_validation_row_at_the_epoch_the_other_half_picked(tiny_cfg, tiny_teachers, tiny_dataset,
                                                                            monkeypatch):
    """fit picks the shipped epoch on all of validation and keeps each epoch's per-row correctness on validation and
    test; the judgement is auto.crossfit of the validation part (the rows file lets anyone replay it); test never
    enters a choice."""
    from fdkd.pipeline import auto

    seen = {}
    real_fit = distill.fit

    def fit(directions, *args, **kwargs):
        seen.update(kwargs)
        return real_fit(directions, *args, **kwargs)

    monkeypatch.setattr(distill, "fit", fit)
    cfg = _cfg(tiny_cfg, "auto-crossfit", **{"distill.method": "auto", "distill.auto.candidates": CANDIDATES})
    _, res = distill.run(cfg)
    val, test = tiny_dataset.indices("val"), tiny_dataset.indices("test")
    assert seen.get("select_rows") is None and np.array_equal(seen["track_rows"], np.concatenate([val, test]))
    a = res["student"]["auto"]
    assert a["judge"] == "crossfit" and a["judge_rows"] == len(val)
    rows = auto.load_rows(cfg.run_dir / auto.ROWS_FILE.format(direction="student"))
    h0, h1 = rows["halves"]
    assert np.array_equal(np.sort(np.concatenate([h0, h1])), np.arange(len(val))) and not set(h0) & set(h1)
    for c in a["candidates"]:
        right = rows["candidates"][c["name"]]
        assert right.shape == (cfg.distill.optim.epochs, len(val) + len(test))
        vr = right[:, : len(val)]
        # the shipped epoch: the best on all of validation (the first on ties), as fit's own choice
        assert c["epoch"] == int(np.argmax(vr.mean(1))) and c["val_acc"] == pytest.approx(vr.mean(1).max())
        judged, picked = auto.crossfit(vr, (h0, h1))
        assert picked == c["fold_epochs"] and c["judge_acc"] == pytest.approx(judged.mean())
        assert picked[0] == int(np.argmax(vr[:, h0].mean(1))) and picked[1] == int(np.argmax(vr[:, h1].mean(1)))
        assert c["test_curve"] == pytest.approx(right[:, len(val):].mean(1), abs=1e-5)
        assert c["test_acc"] == pytest.approx(c["test_curve"][c["epoch"]], abs=1e-5)


def test_crossfit_judges_each_half_at_the_other_halfs_epoch():
    from fdkd.pipeline import auto

    # 3 epochs x 6 rows; half 0 = rows 0-2 peaks at epoch 1, half 1 = rows 3-5 peaks at epoch 2
    right = np.array([[0, 0, 0, 1, 0, 0],
                      [1, 1, 1, 0, 0, 0],
                      [0, 1, 0, 1, 1, 1]], bool)
    judged, picked = auto.crossfit(right, (np.array([0, 1, 2]), np.array([3, 4, 5])))
    assert picked == [1, 2]
    assert judged.tolist() == [False, True, False, False, False, False]  # rows 0-2 at epoch 2, rows 3-5 at epoch 1
    # a lucky epoch on the rows that picked it is not what they are judged by
    assert judged.mean() < max(right[1, :3].mean(), right[2, 3:].mean())
    tie = np.array([[1, 0], [1, 1]], bool)
    assert auto.crossfit(tie, (np.array([0]), np.array([1])))[1] == [0, 1]  # ties: the earliest epoch
    with pytest.raises(ValueError, match="epochs, rows"):
        auto.crossfit(np.zeros((0, 4), bool), (np.array([0, 1]), np.array([2, 3])))


def test_auto_candidates_share_initial_weights_and_the_teacher_cache(tiny_cfg, tiny_teachers, tiny_dataset,
                                                                     monkeypatch):
    seen = {}
    real_fit = distill.fit

    def fit(directions, *args, **kwargs):
        seen["init"] = [{k: v.clone() for k, v in d.student.state_dict().items()} for d in directions]
        seen["caches"] = [d.cache for d in directions]
        return real_fit(directions, *args, **kwargs)

    monkeypatch.setattr(distill, "fit", fit)
    _, res = distill.run(_cfg(tiny_cfg, "auto-share", **{"distill.method": "auto",
                                                         "distill.auto.candidates": CANDIDATES}))
    first = seen["init"][0]
    assert all(torch.equal(first[k], other[k]) for other in seen["init"][1:] for k in first)
    none_cache, kd_cache, fd_cache = seen["caches"]
    assert none_cache is None and kd_cache is fd_cache  # one teacher pass for every candidate


def test_auto_is_the_default_and_candidates_are_validated():
    from fdkd.pipeline.config import ConfigError, load_config

    cfg = load_config(None, [])
    assert cfg.distill.method == "auto"
    assert [n for n, _ in cfg.distill.runs()][0] == "none"
    with pytest.raises(ConfigError, match="plain `none` candidate"):
        load_config(None, ["distill.auto.candidates=[{name: kd, method: kd}]"])
    with pytest.raises(ConfigError, match="candidate 'x'"):
        load_config(None, ["distill.auto.candidates=[{name: none, method: none}, {name: x, method: fd, "
                           "set: {fd.w_lo: 3}}]"])
    with pytest.raises(ConfigError, match="cannot override distill.optim"):
        load_config(None, ["distill.auto.candidates=[{name: none, method: none}, {name: x, method: kd, "
                           "set: {optim.lr: 3}}]"])


def test_auto_refuses_a_global_control():
    from fdkd.pipeline.config import ConfigError, load_config

    for override in ("distill.label_smoothing.epsilon=teacher", "distill.label_smoothing.epsilon=0.1",
                     "distill.teacher_shuffle=true"):
        with pytest.raises(ConfigError, match="put controls in a candidate's `set`"):
            load_config(None, [override])
        load_config(None, [override, "distill.method=kd"])  # one method: the control applies to it


def test_auto_with_a_smoothed_none_candidate_compares_against_the_plain_one(tiny_cfg, tiny_teachers, tiny_dataset,
                                                                           monkeypatch):
    from fdkd.pipeline.report import selection_text

    trained = _rigged_judge(monkeypatch, lambda name, n: _right({"none": n // 4, "ls": n}[name], n))
    cands = "[{name: none, method: none}, {name: ls, method: none, set: {label_smoothing.epsilon: 0.1}}]"
    cfg = _cfg(tiny_cfg, "auto-ls", **{"distill.method": "auto", "distill.auto.candidates": cands})
    _, res = distill.run(cfg)
    _assert_ships(cfg, res, trained, "ls")
    auto = res["student"]["auto"]
    assert auto["winner_plain"] is False and auto["margin_val_pt"] > 50
    verdict = selection_text(auto)[-2]
    assert "not training alone" in verdict and "trained alone" not in verdict
    auto_plain = dict(auto, winner="none", winner_plain=True)
    assert "the student trained alone (`none`) ships" in selection_text(auto_plain)[-2]


def test_auto_chooses_per_direction_when_bidirectional(tiny_cfg, tiny_teachers, tiny_dataset):
    cfg = _cfg(tiny_cfg, "auto-bidi", **{"distill.method": "auto", "distill.bidirectional": "true",
                                         "distill.auto.candidates": CANDIDATES})
    _, res = distill.run(cfg)
    for name, modality in (("student", "audio"), ("reverse", "image")):
        auto = res[name]["auto"]
        win = next(c for c in auto["candidates"] if c["name"] == auto["winner"])
        assert win["passes_margin"] or auto["winner"] == "none"
        assert read_checkpoint(cfg.run_dir / f"student{'' if name == 'student' else '.reverse'}.pt")["modality"] \
            == modality
    names = {json.loads(line)["direction"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()}
    assert names == {f"{d}:{c}" for d in ("student", "reverse") for c in ("none", "kd", "rigged")}


def test_select_unit_rule():
    """fdkd.pipeline.auto.select on hand-made judge vectors: margin, ties, best passer, standard error."""
    from fdkd.pipeline import auto

    def cand(name, right, method="fd"):
        return {"name": name, "method": method, "plain": method == "none" and name == "none", "judge_right": right,
                "val_acc": 0.5, "test_acc": 0.5, "epoch": 0}

    n = 100
    base = _right(50, n)
    near = base.copy()
    near[50:55] = True  # +5 points on 100 rows: SE = sqrt(0.05 * 0.95 / 99) ~ 2.2 pt, so lead ~ 2.3 SE
    far = _right(80, n)
    out = auto.select([cand("none", base, "none"), cand("near", near), cand("far", far)], 2.0)
    assert out["winner"] == "far"
    rows = {c["name"]: c for c in out["candidates"]}
    assert rows["near"]["lead_judge_pt"] == pytest.approx(5)
    assert rows["near"]["se_judge_pt"] == pytest.approx(100 * np.std(near.astype(float) - base, ddof=1) / 10)
    assert rows["near"]["passes_margin"] and rows["far"]["passes_margin"]  # far has the higher judge acc
    assert auto.select([cand("none", base, "none"), cand("near", near)], 3.0)["winner"] == "none"
    assert auto.select([cand("none", base, "none"), cand("same", base.copy())], 0.0)["winner"] == "none"
    worse = _right(40, n)
    assert auto.select([cand("none", base, "none"), cand("worse", worse)], 0.0)["winner"] == "none"


def test_halve_validation_is_stratified_disjoint_and_seeded():
    from fdkd.pipeline import auto

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    val = np.flatnonzero(rng.random(300) < 0.4)
    a1, b1 = auto.halve_validation(y, val, 7)
    a2, b2 = auto.halve_validation(y, val, 7)
    a3, _ = auto.halve_validation(y, val, 8)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2) and not np.array_equal(a1, a3)
    assert not set(a1) & set(b1) and set(a1) | set(b1) == set(val)
    for c in range(5):
        assert abs(int((y[a1] == c).sum()) - int((y[b1] == c).sum())) <= 1
