"""DDP with parameters the loss never reaches (FD-CMKD with ``distill.fd.shared_classifier=false``).

Without ``find_unused_parameters`` DistributedDataParallel stops at the second step ("Expected to
have finished reduction in the prior iteration"); the trainer probes for unused parameters and
tells DDP.
"""

import json
import os
import subprocess
import sys

import torch

from fdkd.pipeline.config import DistillConfig, dump_config, load_config
from fdkd.pipeline.models.encoders import build_encoder
from fdkd.pipeline.objectives import build_objective
from fdkd.pipeline.train import Direction, Joint, unused_parameters
from tests.conftest import tiny_overrides


def _joint(shared: bool):
    cfg = DistillConfig.model_validate({"fd": {"shared_classifier": shared}})
    student, teacher = build_encoder("conv", 1, 3, width=4, depth=2), build_encoder("conv", 1, 3, width=8, depth=2)
    objective = build_objective("fd", student.num_features, teacher.num_features, 3, cfg)
    x = torch.randn(6, 1, 8, 8)
    d = Direction("s", student, objective, x, teacher.eval(), x)
    return Joint([d]), [d]


def test_unused_parameter_probe_names_the_idle_classifiers():
    from fdkd.pipeline.accel import Accel

    acc = Accel(torch.device("cpu"))
    y, idx = torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6)
    joint, dirs = _joint(shared=False)
    before = {k: v.clone() for k, v in joint.state_dict().items()}
    names = unused_parameters(joint, dirs, idx, y, acc)
    assert sorted(names) == ["objectives.0.cls_high.1.bias", "objectives.0.cls_high.1.weight",
                             "objectives.0.cls_low.1.bias", "objectives.0.cls_low.1.weight"]
    assert all(torch.equal(before[k], v) for k, v in joint.state_dict().items())  # BN statistics unmoved
    assert all(p.grad is None for p in joint.parameters()) and joint.training
    joint, dirs = _joint(shared=True)
    assert unused_parameters(joint, dirs, idx, y, acc) == []


def test_two_process_gloo_run_without_shared_classifier(tiny_cfg, tiny_teachers, tiny_dataset):
    root = tiny_cfg.runs_dir.parent
    cfg = load_config(None, tiny_overrides(root) + [
        "name=ddp-unshared", "distill.method=fd", "distill.fd.shared_classifier=false", "distill.optim.epochs=2",
        "threads=1", f"teacher.checkpoint={tiny_teachers['image']}"])
    conf, result = root / "ddp-unshared.yaml", root / "ddp-unshared.json"
    conf.write_text(dump_config(cfg))
    env = dict(os.environ, FDKD_QUIET="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "fdkd.pipeline.distill_worker", "--config", str(conf), "--result", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 parameter(s) unused by the loss" in proc.stdout + proc.stderr
    student = json.loads(result.read_text())["student"]
    assert student["world_size"] == 2
    records = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and "loss/align" not in records[0] and "loss/low" in records[0]
