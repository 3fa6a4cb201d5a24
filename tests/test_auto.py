"""``distill.method: auto``: every candidate trained, the validation argmax ships, ``none`` wins ties."""

import json

import pytest
import torch

from pipeline import distill
from pipeline.models.checkpoint import read_checkpoint
from pipeline.stages import tensors
from pipeline.train import accuracy, predict
from tests.test_distill import _cfg, _test_accuracy

CANDIDATES = "[{name: none, method: none}, {name: kd, method: kd}, {name: rigged, method: fd, set: {fd.w_low: 10}}]"


def _rigged_fit(monkeypatch, val_of):
    """Real training, then the candidates' best validation accuracies overwritten by ``val_of(name, real)``."""
    real_fit = distill.fit
    trained = {}

    def fit(directions, *args, **kwargs):
        records = real_fit(directions, *args, **kwargs)
        for d in directions:
            d.best["val_acc"] = val_of(d.name.split(":")[1], d.best["val_acc"])
            trained[d.name] = d
        return records

    monkeypatch.setattr(distill, "fit", fit)
    return trained


def _assert_ships(cfg, res, trained, name):
    m = res["student"]
    assert m["method"] == "auto" and m["auto"]["winner"] == name
    vals = {c["name"]: c["val_acc"] for c in m["auto"]["candidates"]}
    assert m["val_acc"] == vals[name]
    assert m["auto"]["margin_val_pt"] == pytest.approx(100 * (vals[name] - vals["none"]))
    shipped = read_checkpoint(cfg.run_dir / "student.pt")["state_dict"]
    winner = trained[f"student:{name}"].student.state_dict()
    assert all(torch.equal(shipped[k], winner[k].cpu()) for k in shipped)


def test_auto_ships_the_validation_argmax(tiny_cfg, tiny_teachers, tiny_dataset, monkeypatch):
    trained = _rigged_fit(monkeypatch, lambda name, real: 0.99 if name == "rigged" else min(real, 0.5))
    cfg = _cfg(tiny_cfg, "auto-rigged", **{"distill.method": "auto", "distill.auto.candidates": CANDIDATES})
    _, res = distill.run(cfg)
    _assert_ships(cfg, res, trained, "rigged")
    cands = res["student"]["auto"]["candidates"]
    assert [c["name"] for c in cands] == ["none", "kd", "rigged"]
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


def test_auto_never_ships_a_student_that_lost_to_training_alone(tiny_cfg, tiny_teachers, tiny_dataset, monkeypatch):
    trained = _rigged_fit(monkeypatch, lambda name, real: {"none": 0.6, "kd": 0.6, "rigged": 0.59}[name])
    cfg = _cfg(tiny_cfg, "auto-tie", **{"distill.method": "auto", "distill.auto.candidates": CANDIDATES})
    _, res = distill.run(cfg)
    _assert_ships(cfg, res, trained, "none")  # a tie with training alone goes to training alone
    assert res["student"]["auto"]["margin_val_pt"] == 0


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
    from pipeline.config import ConfigError, load_config

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
    from pipeline.config import ConfigError, load_config

    for override in ("distill.label_smoothing.epsilon=teacher", "distill.label_smoothing.epsilon=0.1",
                     "distill.teacher_shuffle=true"):
        with pytest.raises(ConfigError, match="put controls in a candidate's `set`"):
            load_config(None, [override])
        load_config(None, [override, "distill.method=kd"])  # one method: the control applies to it


def test_auto_with_a_smoothed_none_candidate_compares_against_the_plain_one(tiny_cfg, tiny_teachers, tiny_dataset,
                                                                           monkeypatch):
    from pipeline.report import selection_text

    trained = _rigged_fit(monkeypatch, lambda name, real: {"none": 0.5, "ls": 0.7}[name])
    cands = "[{name: none, method: none}, {name: ls, method: none, set: {label_smoothing.epsilon: 0.1}}]"
    cfg = _cfg(tiny_cfg, "auto-ls", **{"distill.method": "auto", "distill.auto.candidates": cands})
    _, res = distill.run(cfg)
    _assert_ships(cfg, res, trained, "ls")
    auto = res["student"]["auto"]
    assert auto["winner_plain"] is False and auto["margin_val_pt"] == pytest.approx(20)
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
        best = max(c["val_acc"] for c in auto["candidates"])
        assert next(c for c in auto["candidates"] if c["name"] == auto["winner"])["val_acc"] == best
        assert read_checkpoint(cfg.run_dir / f"student{'' if name == 'student' else '.reverse'}.pt")["modality"] \
            == modality
    names = {json.loads(line)["direction"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()}
    assert names == {f"{d}:{c}" for d in ("student", "reverse") for c in ("none", "kd", "rigged")}
