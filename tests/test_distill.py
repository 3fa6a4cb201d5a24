"""Distillation stage: a two-epoch run of every method, checkpoint reload, caching, both directions."""

import json

import pytest
import torch
import yaml

from pipeline import artifacts, distill
from pipeline.models.checkpoint import load_model, read_checkpoint
from pipeline.objectives import METHODS
from pipeline.train import predict


def _cfg(tiny_cfg, name, **updates):
    from pipeline.config import load_config
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


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_epoch_run_of_every_method(tiny_cfg, tiny_teachers, tiny_dataset, method):
    cfg = _cfg(tiny_cfg, f"m-{method}", **{"distill.method": method})
    path, results = distill.run(cfg)
    assert path == cfg.run_dir / "student.pt"
    assert 0.0 <= results["student"]["test_acc"] <= 1.0
    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    expected = {"task"} | {"none": set(), "kd": {"kd"}, "feat": {"feat"}, "dkd": {"dkd"}, "dist": {"dist"},
                           "fd": {"low", "high", "align"}}[method]
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


def test_torchscript_teacher_loads(tiny_cfg, tiny_teachers, tiny_dataset, tmp_path):
    teacher, _ = load_model(tiny_teachers["image"])

    class Scriptable(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        @torch.jit.export
        def forward_features(self, x):
            return self.m.forward_features(x)

        @torch.jit.export
        def forward_head(self, f):
            return self.m.forward_head(f)

        def forward(self, x):
            return self.forward_head(self.forward_features(x))

    ts = tmp_path / "teacher.ts"
    torch.jit.script(Scriptable(teacher)).save(str(ts))
    cfg = _cfg(tiny_cfg, "ts", **{"distill.method": "kd", "teacher.checkpoint": str(ts)})
    _, results = distill.run(cfg)
    assert 0 <= results["student"]["test_acc"] <= 1


def test_bare_state_dict_teacher_needs_and_uses_its_architecture(tiny_cfg, tiny_teachers, tiny_dataset, tmp_path):
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
    _, results = distill.run(cfg)
    assert 0 <= results["student"]["test_acc"] <= 1
