"""A training stage killed mid-training resumes from its last epoch: real ``fdkd`` processes killed with SIGKILL
(``FDKD_KILL_AFTER_EPOCH``) after epoch k, rerun, and compared bit for bit with an uninterrupted run at one thread;
the same under torchrun (gloo, 2 processes: rank 0 writes the state, every rank reads it)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from fdkd import artifacts
from fdkd.pipeline.config import dump_config, load_config
from fdkd.pipeline.resume import KILL_ENV
from tests.conftest import tiny_overrides

# every piece of state the loop carries: auto's candidates (an augmenter shared by them, the self-training and
# labelled streams at 50 % labels), AdamW with warmup and cosine, clipping, accumulation, the weights' average;
# the band split named (its "auto" picks the faster form by timing, which may differ between processes)
RECIPE = ["threads=1", "data.labelled=0.5", "distill.optim.epochs=4", "distill.optim.name=adamw",
          "distill.optim.lr=0.003", "distill.optim.schedule=cosine", "distill.optim.warmup_epochs=1",
          "distill.optim.clip_grad_norm=1.0", "distill.optim.grad_accum_steps=2", "distill.optim.ema_decay=0.9",
          "accel.band_split=matmul"]


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _records(run_dir):
    recs = [json.loads(line) for line in (run_dir / artifacts.METRICS).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in recs]


def _fdkd(args, kill_after=None):
    env = dict(os.environ, FDKD_QUIET="1", OMP_NUM_THREADS="1")
    env.pop(KILL_ENV, None)
    if kill_after:
        env[KILL_ENV] = kill_after
    return subprocess.run([sys.executable, "-m", "fdkd", *args], capture_output=True, text=True, env=env, timeout=600)


def _assert_same_student(resumed_dir, straight_dir):
    a, b = _weights(resumed_dir / artifacts.STUDENT), _weights(straight_dir / artifacts.STUDENT)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run's: {different[:5]}"
    assert _records(resumed_dir) == _records(straight_dir)  # metrics.jsonl: every epoch once, the same numbers


def test_killed_distill_resumes_bit_identical(tiny_cfg, tiny_teachers):
    root = tiny_cfg.runs_dir.parent
    sets = [*tiny_overrides(root), *RECIPE, f"teacher.checkpoint={tiny_teachers['image']}"]

    def args(name):
        return ["distill", *[a for s in [*sets, f"name={name}"] for a in ("--set", s)]]

    straight = _fdkd(args("resume-straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _fdkd(args("resume-killed"), kill_after="distill:2")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    run_dir = root / "runs" / "resume-killed"
    state = run_dir / artifacts.TRAIN_STATE.format(stage="distill")
    assert state.exists() and not (run_dir / artifacts.STUDENT).exists()
    assert len(_records(run_dir)) == 2 * 4  # two epochs of the four candidates logged before the kill

    resumed = _fdkd(args("resume-killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = [line.strip() for line in resumed.stderr.splitlines() if line.strip()]
    stage_line = lines.index("distill")  # fdkd run's stage header, then the stage's own first line
    assert lines[stage_line + 1].startswith("resuming distill from epoch 2 of 4"), lines
    assert not state.exists()  # the stage finished: its training state is gone
    _assert_same_student(run_dir, root / "runs" / "resume-straight")
    metrics = json.loads((run_dir / artifacts.MANIFEST).read_text())["artifacts"][artifacts.STUDENT]["metrics"]
    assert metrics["training"]["resumed_from_epoch"] == 2 and metrics["training"]["epochs_run"] == 4
    if importlib.util.find_spec("tensorboard"):  # the killed run's event file and the resumed one's: each epoch once
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir / "tensorboard" / "distill"))
        events.Reload()
        assert [e.step for e in events.Scalars("student:fd/val_acc")] == [0, 1, 2, 3]


def test_killed_teacher_resumes_bit_identical(tiny_cfg):
    """The teacher stage too (``fdkd teacher``, label smoothing and a cosine warmup schedule)."""
    root = tiny_cfg.runs_dir.parent
    sets = [*tiny_overrides(root), "threads=1", "teacher.optim.epochs=3", "teacher.label_smoothing=0.1",
            "teacher.optim.schedule=cosine", "teacher.optim.warmup_epochs=1"]

    def args(name):
        return ["teacher", *[a for s in [*sets, f"name={name}"] for a in ("--set", s)]]

    assert _fdkd(args("teacher-straight")).returncode == 0
    killed = _fdkd(args("teacher-killed"), kill_after="teacher.image:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = _fdkd(args("teacher-killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming teacher.image from epoch 1 of 3" in resumed.stderr
    name = artifacts.TEACHER.format(modality="image")
    a, b = _weights(root / "runs" / "teacher-killed" / name), _weights(root / "runs" / "teacher-straight" / name)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (root / "runs" / "teacher-killed" / artifacts.TRAIN_STATE.format(stage="teacher.image")).exists()


def test_a_state_of_another_configuration_is_not_resumed(tiny_cfg, tiny_teachers):
    from fdkd.pipeline import distill

    root = tiny_cfg.runs_dir.parent
    sets = [*tiny_overrides(root), "threads=1", "distill.method=none", "name=resume-foreign",
            f"teacher.checkpoint={tiny_teachers['image']}"]
    cfg = load_config(None, sets)
    state = cfg.run_dir / artifacts.TRAIN_STATE.format(stage="distill")
    other = load_config(None, [*sets, "distill.optim.lr=0.01"])
    distill.run(other)  # finishes: no state left
    assert not state.exists()
    # a state of `other` left behind (another key): `cfg` (another lr) must start over, not resume from it
    from fdkd.pipeline.resume import TrainState

    TrainState(state, "some-other-key", "distill").save({"records": [], "directions": []}, 1, 2, True)
    _, results = distill.run(cfg)
    assert "resumed_from_epoch" not in results["student"]["training"] and not state.exists()

def test_killed_torchrun_distill_resumes_on_every_rank(tiny_cfg, tiny_teachers):
    root = tiny_cfg.runs_dir.parent
    sets = [*tiny_overrides(root), "threads=1", "distill.method=fd", "distill.optim.epochs=3",
            "distill.optim.ema_decay=0.9", "accel.band_split=matmul", f"teacher.checkpoint={tiny_teachers['image']}"]
    dirs = {}
    for name, kill in (("straight", None), ("killed", "distill:1"), ("killed", None)):
        cfg = load_config(None, [*sets, f"name=ddp-resume-{name}"])
        conf = root / f"ddp-resume-{name}.yaml"
        conf.write_text(dump_config(cfg))
        env = dict(os.environ, FDKD_QUIET="1", OMP_NUM_THREADS="1")
        env.pop(KILL_ENV, None)
        if kill:
            env[KILL_ENV] = kill
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "fdkd.pipeline.distill_worker", "--config", str(conf)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        state = cfg.run_dir / artifacts.TRAIN_STATE.format(stage="distill")
        if kill:
            assert proc.returncode != 0 and state.exists(), proc.stderr[-3000:]
        else:
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert not state.exists()
        dirs[name] = (cfg.run_dir, proc.stderr)
    run_dir, stderr = dirs["killed"]
    assert "resuming distill from epoch 1 of 3" in stderr
    assert stderr.count("resuming distill") == 1  # rank 0 says it; every rank loads it
    _assert_same_student(run_dir, dirs["straight"][0])


class _Stop(Exception):
    pass


def test_fp16_loss_scalers_resume_in_process(tmp_path):
    """fp16 AMP (one optimizer and one loss scaler per direction) with clipping: a fit stopped after epoch 1 and
    resumed from its state file ends with the uninterrupted fit's weights (scaler state included)."""
    import numpy as np

    from fdkd.pipeline.accel import Accel
    from fdkd.pipeline.config import DistillConfig, OptimConfig
    from fdkd.pipeline.models.encoders import build_encoder
    from fdkd.pipeline.objectives import build_objective
    from fdkd.pipeline.resume import TrainState
    from fdkd.pipeline.train import Direction, fit

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 1, 8, 8, generator=gen), torch.arange(40) % 2
    split = np.array([0] * 32 + [1] * 8)
    acc = Accel(torch.device("cpu"), amp_dtype=torch.float16)
    opt = OptimConfig(epochs=3, batch_size=8, clip_grad_norm=1.0, ema_decay=0.9)

    def directions():
        out = []
        for name in ("a", "b"):
            torch.manual_seed(0)
            s = build_encoder("conv", 1, 2, width=4, depth=2)
            out.append(Direction(name, s, build_objective("none", s.num_features, s.num_features, 2,
                                                          DistillConfig()), x))
        return out

    straight = directions()
    fit(straight, y, split, opt, seed=0, grad_norm_every=0, acc=acc)

    class StopAfterOne(TrainState):
        def save(self, captured, epoch, epochs, write):
            super().save(captured, epoch, epochs, write)
            if epoch == 1:
                raise _Stop

    path = tmp_path / "distill.train-state.pt"
    with pytest.raises(_Stop):
        fit(directions(), y, split, opt, seed=0, grad_norm_every=0, acc=acc, state=StopAfterOne(path, "k", "distill"))
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert len(saved["scalers"]) == 2 and len(saved["optimizers"]) == 2 and saved["epoch"] == 1
    state = TrainState.open(path, "k", "distill")
    assert state.epoch == 1 and state.epochs == 3
    resumed = directions()
    fit(resumed, y, split, opt, seed=0, grad_norm_every=0, acc=acc, state=state)
    for d, ref in zip(resumed, straight, strict=True):
        assert all(torch.equal(v, ref.student.state_dict()[k]) for k, v in d.student.state_dict().items())
        assert d.training["resumed_from_epoch"] == 1 and d.training["epochs_run"] == 3
