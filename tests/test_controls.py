"""Controls: the shuffled teacher keeps class and changes instance; label smoothing matched to the teacher."""

import json

import numpy as np
import pytest
import torch

from fdkd.pipeline import controls, distill
from fdkd.pipeline.models.checkpoint import load_model, read_checkpoint
from fdkd.pipeline.objectives import build_objective
from fdkd.pipeline.train import predict
from tests.test_distill import _cfg, _test_accuracy


def test_shuffle_within_class_is_a_derangement_that_keeps_class():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 200)
    y[150] = 7  # a class with a single row: it can only keep its own teacher outputs
    rows = np.sort(rng.choice(200, 160, replace=False))
    rows = np.union1d(rows, [150])
    src = controls.shuffle_within_class(y, rows, seed=0)
    assert sorted(src) == sorted(rows)  # a permutation of the training rows: every output used once
    assert (y[src] == y[rows]).all()  # class-level knowledge kept
    sizes = {c: int((y[rows] == c).sum()) for c in np.unique(y[rows])}
    moved = src != rows
    assert all(moved[k] for k in range(len(rows)) if sizes[y[rows[k]]] > 1)  # no fixed point: instance destroyed
    assert src[list(rows).index(150)] == 150
    assert (controls.shuffle_within_class(y, rows, seed=0) == src).all()  # seeded
    assert (controls.shuffle_within_class(y, rows, seed=1) != src).any()


def test_shuffled_teacher_rows_touch_only_training_rows():
    y = np.repeat(np.arange(4), 10)
    split = np.tile([0, 0, 0, 1, 2], 8)
    row_map = controls.shuffled_teacher_rows(y, split, seed=2)
    assert (row_map[split != 0] == np.flatnonzero(split != 0)).all()
    train = np.flatnonzero(split == 0)
    assert set(row_map[train]) == set(train) and (row_map[train] != train).all() and (y[row_map] == y).all()


def test_shuffled_teacher_cache_is_the_real_cache_permuted_within_class(tiny_cfg, tiny_teachers, tiny_dataset):
    from fdkd.pipeline import accel
    from fdkd.pipeline.train import tensors

    x, _ = tensors(tiny_dataset)
    cfg = _cfg(tiny_cfg, "shuffle-cache", **{"distill.method": "kd", "distill.teacher_shuffle": "true"})
    teachers = distill._Teachers(cfg, tiny_dataset, x, accel.setup(cfg.accel))
    real_f, real_z = teachers.train_outputs("image", False)
    shuf_f, shuf_z = teachers.train_outputs("image", True)
    train = tiny_dataset.indices("train")
    src = controls.shuffle_within_class(tiny_dataset.y, train, cfg.seed)
    pos = {r: k for k, r in enumerate(train)}
    perm = torch.tensor([pos[r] for r in src])
    torch.testing.assert_close(shuf_z, real_z[perm])
    torch.testing.assert_close(shuf_f, real_f[perm])
    assert not torch.equal(shuf_z, real_z)
    d, _, info = distill._direction(cfg, cfg.distill, tiny_dataset, x, teachers, "student", "audio", "image")
    assert d.cache[1] is shuf_z and info["teacher_shuffle"] is True


def test_shuffled_teacher_trains_with_any_method(tiny_cfg, tiny_teachers, tiny_dataset):
    for method in ("kd", "fd"):
        runs = {}
        for shuffle in ("true", "false"):
            cfg = _cfg(tiny_cfg, f"shuffle-{method}-{shuffle}", **{"distill.method": method,
                                                                   "distill.teacher_shuffle": shuffle})
            _, res = distill.run(cfg)
            assert res["student"]["test_acc"] == pytest.approx(_test_accuracy(cfg.run_dir / "student.pt",
                                                                              tiny_dataset))
            runs[shuffle] = (res["student"], read_checkpoint(cfg.run_dir / "student.pt")["state_dict"],
                             [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()])
        (shuf, s_state, s_log), (real, r_state, r_log) = runs["true"], runs["false"]
        assert shuf["teacher_shuffle"] is True and "teacher_shuffle" not in real
        # same initial weights and batches; only the teacher targets differ: so do the losses and the students
        teacher_terms = [k for k in s_log[0] if k.startswith("loss/") and k != "loss/task"]
        assert teacher_terms and all(s_log[0][k] != r_log[0][k] for k in teacher_terms)
        assert any(not torch.equal(s_state[k], r_state[k]) for k in s_state)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.1, 0.37, 0.9])
def test_epsilon_for_entropy_inverts_the_smoothed_entropy(eps):
    assert controls.epsilon_for_entropy(controls.smoothed_entropy(eps, 10), 10) == pytest.approx(eps, abs=1e-7)


def test_label_smoothing_strength_equals_the_measured_entropy_match(tiny_cfg, tiny_teachers, tiny_dataset):
    cfg = _cfg(tiny_cfg, "ls-teacher", **{"distill.method": "none", "distill.label_smoothing.epsilon": "teacher",
                                            "distill.label_smoothing.temperature": 2.0})
    _, res = distill.run(cfg)
    m = res["student"]
    # measured here independently: the teacher's mean entropy of softmax(z / 2) on the training rows
    teacher, _ = load_model(tiny_teachers["image"])
    z = predict(teacher, torch.from_numpy(tiny_dataset.x["image"][tiny_dataset.indices("train")])).double()
    p = torch.softmax(z / 2.0, 1)
    h = float(-(p * p.log()).sum(1).mean())
    assert m["teacher_entropy"] == pytest.approx(h, rel=1e-6)
    assert 0 < m["label_smoothing"] < 1
    assert controls.smoothed_entropy(m["label_smoothing"], 10) == pytest.approx(h, rel=1e-6)
    # the task term trains against the smoothed target: its cross-entropy can never fall below that entropy
    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert min(r["loss/task"] for r in records) >= h


def test_task_term_uses_the_smoothing_strength():
    from fdkd.pipeline.config import load_config

    cfg = load_config(None, ["distill.method=none", "distill.label_smoothing.epsilon=0.2"]).distill
    obj = build_objective("none", 8, 8, 10, cfg)
    z, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    task = obj(None, z, None, None, y)["task"][1]
    torch.testing.assert_close(task, torch.nn.functional.cross_entropy(z, y, label_smoothing=0.2))
    with pytest.raises(ValueError, match="epsilon"):
        load_config(None, ["distill.label_smoothing.epsilon=1.5"])


def test_pre_activation_tap_feeds_the_objective_the_last_block_before_its_relu(tiny_cfg, tiny_teachers, tiny_dataset):
    from fdkd.pipeline.models.encoders import ConvEncoder
    from fdkd.pipeline.train import features

    enc = ConvEncoder(1, 10, width=4, depth=2).eval()
    x = torch.randn(3, 1, 8, 8)
    f_head, f_pre = features(enc, x, "pre")
    torch.testing.assert_close(f_head, enc.forward_features(x))
    assert (f_pre < 0).any() and not torch.allclose(f_pre, f_head)  # pooled before the ReLU: signed
    states = {}
    for tap in ("pre", "post"):
        cfg = _cfg(tiny_cfg, f"tap-{tap}", **{"distill.method": "fd", "distill.feature_tap": tap})
        _, res = distill.run(cfg)
        assert res["student"].get("feature_tap", "post") == tap
        assert res["student"]["test_acc"] == pytest.approx(_test_accuracy(cfg.run_dir / "student.pt", tiny_dataset))
        states[tap] = read_checkpoint(cfg.run_dir / "student.pt")["state_dict"]
    assert any(not torch.equal(states["pre"][k], states["post"][k]) for k in states["pre"])  # the tap was used


def test_class_prototypes_are_the_means_over_the_teacher_predicted_class():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(60, 4, generator=g)
    f = torch.randn(60, 6, generator=g)
    pf, pz, predicted = controls.class_prototypes(f, z)
    assert (predicted == z.argmax(1).numpy()).all()
    for c in range(4):
        rows = torch.from_numpy(predicted == c)
        assert rows.any()
        torch.testing.assert_close(pz[rows], z[rows].mean(0).expand(int(rows.sum()), -1))
        torch.testing.assert_close(pf[rows], f[rows].mean(0).expand(int(rows.sum()), -1))
    # per-pair information is gone: two rows the teacher puts in one class get identical outputs
    assert len(torch.unique(pz, dim=0)) == 4 and len(torch.unique(pf, dim=0)) == 4
    with pytest.raises(ValueError, match="feature rows"):
        controls.class_prototypes(f[:5], z)


def test_prototype_teacher_cache_keeps_the_teachers_verdict_and_drops_the_pair(tiny_cfg, tiny_teachers,
                                                                              tiny_dataset):
    from fdkd.pipeline import accel
    from fdkd.pipeline.train import tensors

    x, _ = tensors(tiny_dataset)
    cfg = _cfg(tiny_cfg, "proto-cache", **{"distill.method": "kd", "distill.teacher_prototype": "true"})
    teachers = distill._Teachers(cfg, tiny_dataset, x, accel.setup(cfg.accel))
    real_f, real_z = teachers.train_outputs("image", False)
    d, _, info = distill._direction(cfg, cfg.distill, tiny_dataset, x, teachers, "student", "audio", "image")
    proto_f, proto_z = d.cache
    predicted = real_z.argmax(1)
    for c in torch.unique(predicted):
        rows = predicted == c
        torch.testing.assert_close(proto_z[rows], real_z[rows].double().mean(0).float().expand(int(rows.sum()), -1))
        torch.testing.assert_close(proto_f[rows], real_f[rows].double().mean(0).float().expand(int(rows.sum()), -1))
    # the verdict survives wherever the mean keeps it (label correction); the pair's own logits do not
    assert (proto_z.argmax(1) == predicted).float().mean() > 0.9
    assert not torch.equal(proto_z, real_z) and info["teacher_prototype"] is True
    _, res = distill.run(cfg)
    assert res["student"]["teacher_prototype"] is True
    assert res["student"]["test_acc"] == pytest.approx(_test_accuracy(cfg.run_dir / "student.pt", tiny_dataset))


def test_prototype_teacher_is_refused_where_it_cannot_apply():
    from fdkd.pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="teacher_prototype and distill.teacher_shuffle"):
        load_config(None, ["distill.method=kd", "distill.teacher_prototype=true", "distill.teacher_shuffle=true"])
    with pytest.raises(ConfigError, match="needs distill.teacher_cache"):
        load_config(None, ["distill.method=kd", "distill.teacher_prototype=true", "distill.teacher_cache=false"])
    with pytest.raises(ConfigError, match="put controls in a candidate's `set`"):
        load_config(None, ["distill.teacher_prototype=true"])
    cfg = load_config(None, ["distill.auto.candidates=[{name: none, method: none}, "
                             "{name: p, method: kd, set: {teacher_prototype: true}}]"])
    assert cfg.distill.candidate(cfg.distill.auto.candidates[1]).teacher_prototype is True
