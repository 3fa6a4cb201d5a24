"""Distillation stage: a two-epoch run of every method, checkpoint reload, caching, both directions."""

import json

import pytest
import torch
import yaml

from fdkd import artifacts
from fdkd.pipeline import distill
from fdkd.pipeline.models.checkpoint import load_model, read_checkpoint
from fdkd.pipeline.objectives import METHODS
from fdkd.pipeline.train import predict
from tests.torchscript import save_scripted


def _cfg(tiny_cfg, name, **updates):
    from fdkd.pipeline.config import load_config
    from tests.conftest import tiny_overrides

    root = tiny_cfg.runs_dir.parent
    sets = tiny_overrides(root) + [f"{k}={v}" for k, v in updates.items()]
    cfg = load_config(None, sets)
    # every run shares the session's teachers
    teachers = {m: tiny_cfg.run_dir / artifacts.TEACHER.format(modality=m) for m in ("image", "audio")}
    run_dir = cfg.runs_dir / name
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in teachers.values():
        target = run_dir / path.name
        if not target.exists():
            target.symlink_to(path)
    return cfg.model_copy(update={"name": name})


def _test_accuracy(path, ds, split="test") -> float:
    model, ckpt = load_model(path)
    x = torch.from_numpy(ds.x[ckpt["modality"]])
    rows = ds.indices(split)
    return float((predict(model, x[rows]).argmax(1) == torch.from_numpy(ds.y[rows])).float().mean())


def _assert_same_student(a, b, atol=0.0):
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=atol if atol else 0.0, msg=k)


@pytest.fixture(scope="module")
def kd_reference(tiny_cfg, tiny_teachers, tiny_dataset):
    """A kd student distilled from the run's own (fdkd checkpoint) image teacher."""
    return distill.run(_cfg(tiny_cfg, "kd-ref", **{"distill.method": "kd"}))[0]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_epoch_run_of_every_method(tiny_cfg, tiny_teachers, tiny_dataset, method):
    # the pseudo-label methods act on unlabelled pairs only: give them some, and a threshold every row passes
    semi = {"data.labelled": "0.5", "distill.pseudo.threshold": "0", "distill.self_training.threshold": "0"} \
        if method in ("pseudo", "self-training") else {}
    cfg = _cfg(tiny_cfg, f"m-{method}", **{"distill.method": method, **semi})
    path, results = distill.run(cfg)
    assert path == cfg.run_dir / "student.pt"
    # the reported test accuracy is the saved checkpoint's, recomputed here from the file
    assert results["student"]["test_acc"] == pytest.approx(_test_accuracy(path, tiny_dataset))
    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    best = max(range(len(records)), key=lambda i: (records[i]["val_acc"], -i))  # first epoch with the best val
    assert results["student"]["epoch"] == best and results["student"]["val_acc"] == records[best]["val_acc"]
    expected = {"task"} | {"none": set(), "kd": {"kd"}, "feat": {"feat"}, "dkd": {"dkd"}, "dist": {"dist"},
                           "fd": {"low", "high", "align"}, "pseudo": {"pseudo"}, "self-training": {"self"}}[method]
    for r in records:
        assert {k.split("/")[1] for k in r if k.startswith("loss/")} == expected
        assert {k.split("/")[1] for k in r if k.startswith("grad_norm/")} == expected
        assert all(r[f"grad_norm/{t}"] > 0 for t in expected)
    # the resolved config sits next to the artifact
    assert yaml.safe_load((cfg.run_dir / "student.config.yaml").read_text())["distill"]["method"] == method


def test_checkpoint_reloads_with_identical_predictions(tiny_cfg, tiny_teachers, tiny_dataset):
    cfg = _cfg(tiny_cfg, "reload", **{"distill.method": "fd"})
    path, results = distill.run(cfg)
    model, ckpt = load_model(path)
    assert ckpt["modality"] == "audio" and ckpt["class_names"][0] == "zero"
    assert ckpt["arch"]["width"] == 4 and ckpt["config"]["distill"]["method"] == "fd"
    assert ckpt["preprocessing"]["kind"] == "audio_logmel"
    # the student is backbone + head only: no projector or shared classifiers
    assert not any(k.startswith(("projector", "cls_")) for k in ckpt["state_dict"])
    x = torch.from_numpy(tiny_dataset.x["audio"])
    test = tiny_dataset.indices("test")
    acc = float((predict(model, x[test]).argmax(1) == torch.from_numpy(tiny_dataset.y[test])).float().mean())
    assert acc == pytest.approx(results["student"]["test_acc"])


def test_truncated_checkpoint_is_named(tmp_path):
    bad = tmp_path / "student.pt"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="student.pt"):
        read_checkpoint(bad)


def test_teacher_cache_matches_teacher_every_step(tiny_cfg, tiny_teachers, tiny_dataset):
    a, _ = distill.run(_cfg(tiny_cfg, "cache-on", **{"distill.method": "kd"}))
    b, _ = distill.run(_cfg(tiny_cfg, "cache-off", **{"distill.method": "kd", "distill.teacher_cache": "false"}))
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-4, rtol=1e-4)


def test_same_seed_same_student(tiny_cfg, tiny_teachers, tiny_dataset):
    a, ra = distill.run(_cfg(tiny_cfg, "seed-a", **{"distill.method": "fd", "seed": 5}))
    b, rb = distill.run(_cfg(tiny_cfg, "seed-b", **{"distill.method": "fd", "seed": 5}))
    assert ra == rb
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bidirectional_trains_both_students(tiny_cfg, tiny_teachers, tiny_dataset):
    cfg = _cfg(tiny_cfg, "bidi", **{"distill.method": "fd", "distill.bidirectional": "true"})
    _, results = distill.run(cfg)
    assert set(results) == {"student", "reverse"}
    assert read_checkpoint(cfg.run_dir / "student.pt")["modality"] == "audio"
    assert read_checkpoint(cfg.run_dir / "student.reverse.pt")["modality"] == "image"
    directions = {json.loads(line)["direction"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()}
    assert directions == {"student", "reverse"}


def test_missing_teacher_is_a_clear_error(tiny_cfg, tiny_dataset):
    cfg = tiny_cfg.model_copy(update={"name": "no-teacher"})
    with pytest.raises(FileNotFoundError, match="fdkd teacher --modality image"):
        distill.run(cfg)


def test_torchscript_teacher_loads(tiny_cfg, tiny_teachers, tiny_dataset, tmp_path, kd_reference):
    teacher, _ = load_model(tiny_teachers["image"])

    ts = save_scripted(teacher, tmp_path / "teacher.ts")
    cfg = _cfg(tiny_cfg, "ts", **{"distill.method": "kd", "teacher.checkpoint": str(ts)})
    path, _ = distill.run(cfg)
    _assert_same_student(path, kd_reference, atol=1e-5)  # the scripted teacher taught exactly the same student


def test_bare_state_dict_teacher_needs_and_uses_its_architecture(tiny_cfg, tiny_teachers, tiny_dataset, tmp_path,
                                                                 kd_reference):
    teacher, ckpt = load_model(tiny_teachers["image"])
    sd = tmp_path / "teacher_state.pt"
    torch.save(teacher.state_dict(), sd)
    cfg = _cfg(tiny_cfg, "sd-missing", **{"distill.method": "kd", "teacher.checkpoint": str(sd)})
    with pytest.raises(ValueError, match="teacher.checkpoint_arch"):
        distill.run(cfg)
    a = ckpt["arch"]
    arch = f"{{arch: conv, width: {a['width']}, depth: {a['depth']}, stem_stride: {a['stem_stride']}}}"
    cfg = _cfg(tiny_cfg, "sd", **{"distill.method": "kd", "teacher.checkpoint": str(sd),
                                  "teacher.checkpoint_arch": arch})
    with pytest.raises(ValueError, match="does not fit"):
        distill.run(_cfg(tiny_cfg, "sd-wrong", **{"distill.method": "kd", "teacher.checkpoint": str(sd),
                                                  "teacher.checkpoint_arch": "{arch: conv, width: 3, depth: 1}"}))
    path, _ = distill.run(cfg)
    _assert_same_student(path, kd_reference)  # the same weights, loaded from a bare state dict


def test_checkpoint_is_the_best_validation_epoch_not_the_last(tiny_cfg, tiny_teachers, tiny_dataset, monkeypatch):
    """Training is real; the validation accuracy per epoch is scripted (0.2, 0.6, 0.4) so the best epoch is known."""
    from fdkd.pipeline import train

    scripted, snapshots = iter([0.2, 0.6, 0.4]), []

    def val_accuracy(student, x, y, acc, workers=0):
        snapshots.append({k: v.detach().clone() for k, v in student.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(train, "_val_accuracy", val_accuracy)
    cfg = _cfg(tiny_cfg, "best-epoch", **{"distill.method": "kd", "distill.optim.epochs": 3})
    path, results = distill.run(cfg)
    assert results["student"]["epoch"] == 1 and results["student"]["val_acc"] == 0.6
    saved = read_checkpoint(path)["state_dict"]
    assert all(torch.equal(saved[k], snapshots[1][k]) for k in saved)  # the weights as they were after epoch 1
    assert not all(torch.equal(saved[k], snapshots[2][k]) for k in saved)  # not the last epoch's
    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in records] == [0.2, 0.6, 0.4]


@pytest.mark.parametrize("teacher_cache", [True, False])
def test_teacher_weights_and_batchnorm_buffers_are_unchanged_by_distillation(tiny_cfg, tiny_teachers, tiny_dataset,
                                                                             teacher_cache):
    from fdkd.pipeline import accel, train
    from fdkd.pipeline.data import load

    cfg = _cfg(tiny_cfg, f"frozen-{teacher_cache}", **{"distill.method": "fd",
                                                       "distill.teacher_cache": str(teacher_cache).lower()})
    ds = load(cfg)
    x = {m: torch.from_numpy(a) for m, a in ds.x.items()}
    teachers = distill._Teachers(cfg, ds, x, accel.setup(cfg.accel))
    direction, _, _ = distill._direction(cfg, cfg.distill, ds, x, teachers, "student", "audio", "image")
    assert (direction.cache is not None) == teacher_cache
    teacher = direction.teacher
    before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.detach().clone() for k, v in direction.student.state_dict().items()}
    assert any("running_mean" in k for k in before) and any("num_batches_tracked" in k for k in before)
    train.fit([direction], torch.from_numpy(ds.y), ds.split, cfg.distill.optim, seed=0, teacher_cache=teacher_cache,
              grad_norm_every=0)
    after = teacher.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"distillation changed the teacher: {changed}"
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student_after = direction.student.state_dict()
    assert any(not torch.equal(v, student_after[k]) for k, v in student_before.items())  # while the student trained


def test_fp16_amp_scales_each_candidate_on_its_own():
    """An overflow in one auto candidate skips that candidate's step only: the others train as if trained alone."""
    import numpy as np

    from fdkd.pipeline.accel import Accel
    from fdkd.pipeline.config import DistillConfig, OptimConfig
    from fdkd.pipeline.models.encoders import build_encoder
    from fdkd.pipeline.objectives import build_objective
    from fdkd.pipeline.train import Direction, fit

    class Overflowing(torch.nn.Module):
        """The wrapped objective (``none``: the trainer reads its class flags), its loss infinite on the first step."""

        needs_teacher, self_teacher, labelled_only = False, False, True

        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, *args):
            self.calls += 1
            terms = self.inner(*args)
            return {k: (w, v * float("inf")) for k, (w, v) in terms.items()} if self.calls == 1 else terms

    def student():
        torch.manual_seed(0)
        s = build_encoder("conv", 1, 2, width=4, depth=2)
        return s, build_objective("none", s.num_features, s.num_features, 2, DistillConfig())

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 1, 8, 8, generator=gen), torch.arange(24) % 2
    split = np.array([0] * 16 + [1] * 8)
    acc = Accel(torch.device("cpu"), amp_dtype=torch.float16)
    opt = OptimConfig(epochs=2, batch_size=8)
    alone = Direction("alone", *student(), x)
    fit([alone], y, split, opt, seed=0, grad_norm_every=0, acc=acc)
    good, (bad_s, bad_o) = Direction("good", *student(), x), student()
    bad = Direction("bad", bad_s, Overflowing(bad_o), x)
    fit([good, bad], y, split, opt, seed=0, grad_norm_every=0, acc=acc)
    ref = alone.student.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in good.student.state_dict().items())
    assert bad.objective.calls > 1 and all(torch.isfinite(v).all() for v in bad.student.state_dict().values()
                                           if v.is_floating_point())
