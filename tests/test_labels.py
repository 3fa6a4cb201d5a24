"""Partly labelled and noisy training labels: what the knobs do, and that hidden labels never reach the student."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fdkd.pipeline import distill
from fdkd.pipeline.data.labels import UNLABELLED, add_label_noise, keep_labels, student_labels
from fdkd.pipeline.losses.pseudo import labelled_cross_entropy, pseudo_label_loss
from tests.test_distill import _assert_same_student, _cfg


def _toy(n_per_class=(40, 25, 7), val=10, test=10, seed=0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)] + [rng.integers(0, 3, val + test)])
    split = np.array([0] * sum(n_per_class) + [1] * val + [2] * test)
    perm = rng.permutation(len(y))
    return y[perm], split[perm]


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.5, 0.99])
def test_labelled_fraction_is_per_class_and_touches_training_rows_only(fraction):
    y, split = _toy()
    out = keep_labels(y, split, fraction, seed=3)
    for c, n in enumerate((40, 25, 7)):
        rows = (split == 0) & (y == c)
        assert (out[rows] == c).sum() == max(1, round(fraction * n))  # stratified, at least one per class
        assert set(out[rows]) <= {c, UNLABELLED}
    assert np.array_equal(out[split != 0], y[split != 0])  # validation and test keep every label


def test_labelled_fraction_is_seeded_and_one_changes_nothing():
    y, split = _toy()
    a, b = keep_labels(y, split, 0.3, seed=7), keep_labels(y, split, 0.3, seed=7)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, keep_labels(y, split, 0.3, seed=8))
    assert np.array_equal(keep_labels(y, split, 1.0, seed=7), y)
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="data.labelled"):
            keep_labels(y, split, bad, seed=0)


def test_label_noise_flips_the_stated_share_of_kept_labels_to_other_classes():
    y, split = _toy()
    kept, info = student_labels(y, split, 3, labelled=0.5, noise=0.4, seed=1)
    clean = keep_labels(y, split, 0.5, seed=1)
    assert np.array_equal(kept < 0, clean < 0)  # noise acts on the kept labels, never un-labels a row
    train = (split == 0) & (clean >= 0)
    for c in range(3):
        rows = train & (clean == c)
        assert (kept[rows] != c).sum() == round(0.4 * rows.sum())
    assert np.array_equal(kept[split != 0], y[split != 0])
    assert info["train_noisy"] == int((train & (kept != y)).sum())
    assert info["train_labelled"] + info["train_unlabelled"] == info["train_rows"] == int((split == 0).sum())
    again, _ = student_labels(y, split, 3, labelled=0.5, noise=0.4, seed=1)
    assert again.tobytes() == kept.tobytes()
    with pytest.raises(ValueError, match="data.label_noise"):
        add_label_noise(y, split, 1.0, 3, seed=0)


def test_load_applies_the_knobs_and_keeps_the_file_labels_for_the_teacher(tiny_cfg):
    from fdkd.pipeline import data

    cfg = tiny_cfg.model_copy(update={"data": tiny_cfg.data.model_copy(update={"labelled": 0.25})})
    a, b = data.load(cfg), data.load(cfg)
    assert a.y.tobytes() == b.y.tobytes()
    train = a.indices("train")
    assert (a.y[train] == UNLABELLED).sum() == a.labels["train_unlabelled"] > 0
    assert (a.teacher_labels >= 0).all()  # the built-in preset's teacher sees every image's label
    labelled = a.y >= 0
    assert np.array_equal(a.y[labelled], a.teacher_labels[labelled])
    counts = a.label_counts()
    assert counts["train"]["unlabelled"] == a.labels["train_unlabelled"] and counts["val"]["unlabelled"] == 0


def test_unlabelled_rows_get_no_cross_entropy_gradient():
    torch.manual_seed(0)
    z = torch.randn(12, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, -1, -1, 2, -1, 0, -1, 1, -1])
    loss = labelled_cross_entropy(z, y, label_smoothing=0.1)
    loss.backward()
    lab = y >= 0
    torch.testing.assert_close(loss, F.cross_entropy(z[lab], y[lab], label_smoothing=0.1))
    assert (z.grad[~lab] == 0).all() and (z.grad[lab] != 0).any()
    # pseudo-labels act on the unlabelled rows only
    z.grad = None
    pseudo_label_loss(z, torch.randn(12, 4) * 5, y, threshold=0.0).backward()
    assert (z.grad[lab] == 0).all() and (z.grad[~lab] != 0).any()


@pytest.mark.parametrize("method,extra", [("kd", {}), ("fd", {}), ("dkd", {}), ("pseudo", {}),
                                          ("kd", {"distill.teacher_shuffle": "true"}),
                                          ("none", {"distill.label_smoothing.epsilon": "teacher"})])
def test_poisoned_hidden_labels_change_nothing(tiny_cfg, tiny_teachers, tiny_dataset, monkeypatch, method, extra):
    """The file's labels of the unlabelled training pairs (hidden from the student) are rewritten to another
    class: the student, its losses and the shuffled teacher's pairing must not change by a single bit."""
    from fdkd.pipeline import data

    real_load = data.load
    sets = {"distill.method": method, "data.labelled": "0.3", "distill.pseudo.threshold": "0", **extra}
    name = f"poison-{method}-{len(extra)}"

    def poisoned(cfg, progress=None):
        ds = real_load(cfg, progress)
        hidden = (ds.split == 0) & (ds.y < 0)
        ds.teacher_y = ds.teacher_y.copy()
        ds.teacher_y[hidden] = (ds.teacher_y[hidden] + 1) % ds.num_classes
        return ds

    clean_path, clean = distill.run(_cfg(tiny_cfg, name + "-clean", **sets))
    monkeypatch.setattr(distill.data, "load", poisoned)
    poison_path, dirty = distill.run(_cfg(tiny_cfg, name + "-dirty", **sets))
    _assert_same_student(clean_path, poison_path)
    assert clean["student"]["val_acc"] == dirty["student"]["val_acc"]
    metrics = [(p.parent / "metrics.jsonl").read_text() for p in (clean_path, poison_path)]
    strip = [[{k: v for k, v in json.loads(s).items() if k != "epoch_seconds"}
              for s in m.splitlines()] for m in metrics]
    assert strip[0] == strip[1]  # every loss term, every epoch


def test_self_training_never_sees_the_teacher(tiny_cfg, tiny_teachers, tiny_dataset, monkeypatch):
    def no_teacher(*a, **k):
        raise AssertionError("self-training touched the teacher")

    monkeypatch.setattr(distill, "load_teacher", no_teacher)
    monkeypatch.setattr(distill, "teacher_outputs", no_teacher)
    cfg = _cfg(tiny_cfg, "self-no-teacher", **{"distill.method": "self-training", "data.labelled": "0.3",
                                               "distill.self_training.threshold": "0"})
    path, results = distill.run(cfg)
    assert path.exists() and results["student"]["labels"]["train_unlabelled"] > 0


def test_partly_labelled_steps_give_every_candidate_the_labelled_batch_none_trains_on(tiny_cfg, tiny_teachers,
                                                                                         tiny_dataset, monkeypatch):
    """Each step: ``none`` trains on a batch of labelled rows; every other candidate on the shared batch plus that
    same labelled batch, so its cross-entropy never averages just the few labelled rows a shared batch holds."""
    from fdkd.pipeline import train

    seen = []
    real = train._inputs

    def spy(directions, batches, y, acc, augment=False, fetched=None):
        if augment:
            seen.append([(d.name, rows.clone()) for d, (rows, _) in zip(directions, batches, strict=True)])
        return real(directions, batches, y, acc, augment, fetched)

    monkeypatch.setattr(train, "_inputs", spy)
    cands = '[{name: none, method: none}, {name: pseudo, method: pseudo}]'
    cfg = _cfg(tiny_cfg, "labelled-batch", **{"distill.method": "auto", "distill.auto.candidates": cands,
                                              "data.labelled": "0.1"})
    distill.run(cfg)
    from fdkd.pipeline import data

    y = data.load(cfg).y  # the student's labels in that run
    assert seen
    for step in seen:
        (n_name, n_rows), (p_name, p_rows) = step
        assert n_name.endswith("none") and p_name.endswith("pseudo")
        assert (y[n_rows.numpy()] >= 0).all()  # none: labelled rows only
        k = len(n_rows)
        assert torch.equal(p_rows[-k:], n_rows)  # the same labelled batch, after the shared one
        assert (y[p_rows[:-k].numpy()] < 0).any()  # the shared batch holds unlabelled pairs
