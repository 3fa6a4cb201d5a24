"""Weights from a file (issue 30, item 1) with the built-in conv encoder, so it runs in the main venv (no timm):
``init`` loads strictly and replaces a classifier of another class count, other mismatches name the file and keys,
``pretrained`` without a file is refused, and a frozen teacher of another class count is refused before any stage.

The timm/torchvision side (key layouts, safetensors, normalisation, taps, shipping students) is in tests/models/,
run from the models venv (.ci/run).
"""

from __future__ import annotations

import pytest
import torch

from fdkd.pipeline.config import ConfigError, load_config
from fdkd.pipeline.models.checkpoint import save_checkpoint
from fdkd.pipeline.models.encoders import ConvEncoder, build_encoder
from fdkd.pipeline.models.init import InitError, load_init
from tests.torchscript import save_scripted
from tests.user_data import make_pairs


def _arch(classes: int, width: int = 4) -> dict:
    return {"arch": "conv", "in_chans": 1, "num_classes": classes, "width": width, "depth": 2, "stem_stride": 1}


def test_pretrained_without_init_says_to_pass_init():
    with pytest.raises(ConfigError, match=r"distill.student.*pretrained: true needs init: PATH"):
        load_config(None, ["distill.student.pretrained=true"])
    with pytest.raises(ConfigError, match="init .*expected one of"):
        load_config(None, ["teacher.model.init=weights.onnx"])


def test_teacher_init_gets_the_finetuning_learning_rate_unless_set():
    from fdkd.pipeline.config.model import FINETUNE_LR

    tuned = load_config(None, ["teacher.model.init=w.pth"]).teacher.optim
    assert tuned.lr == FINETUNE_LR and tuned.warmup_epochs == 1
    set_warmup = ["teacher.model.init=w.pth", "teacher.optim.warmup_epochs=2"]
    assert load_config(None, set_warmup).teacher.optim.warmup_epochs == 2
    assert load_config(None, ["teacher.model.init=w.pth", "teacher.optim.epochs=1"]).teacher.optim.warmup_epochs == 0
    assert load_config(None, ["teacher.model.init=w.pth", "teacher.optim.lr=0.1"]).teacher.optim.lr == 0.1
    scratch = load_config(None, []).teacher.optim
    assert scratch.lr != FINETUNE_LR and scratch.warmup_epochs == 0  # from scratch: unchanged


def test_init_from_an_fdkd_checkpoint_replaces_a_head_of_another_class_count(tmp_path):
    torch.manual_seed(0)
    source = build_encoder(**_arch(10))
    path = tmp_path / "ten.pt"
    save_checkpoint(path, source, _arch(10))
    target, said = build_encoder(**_arch(5)), []
    head_before = target.head.weight.clone()
    record = load_init(target, path, "distill.student.init", say=said.append)
    assert record["head_replaced"] and len(record["sha256"]) == 64 and record["path"] == str(path)
    assert said == ["distill.student.init: classifier head replaced: 10 classes in the file, 5 in the data"]
    for k, v in source.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(target.state_dict()[k], v), k
    assert torch.equal(target.head.weight, head_before)  # the fresh head kept
    # same class count: everything loads, nothing said
    same, said = build_encoder(**_arch(10)), []
    assert not load_init(same, path, "x", say=said.append)["head_replaced"] and said == []
    assert all(torch.equal(same.state_dict()[k], v) for k, v in source.state_dict().items())


def test_any_other_mismatch_names_the_file_and_first_keys(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(ConvEncoder(1, 5, width=8, depth=2).state_dict(), path)  # a bare state dict, conv layout
    with pytest.raises(InitError) as e:
        load_init(build_encoder(**_arch(5, width=4)), path, "teacher.model.init")
    msg = str(e.value)
    assert "teacher.model.init" in msg and str(path) in msg and "shape mismatch" in msg
    assert "stem.0.weight (8, 1, 3, 3) in the file, (4, 1, 3, 3) in the model" in msg
    deeper = tmp_path / "deeper.pth"
    torch.save(ConvEncoder(1, 5, width=4, depth=3).state_dict(), deeper)
    with pytest.raises(InitError, match=r"unexpected: blocks\.2\."):
        load_init(build_encoder(**_arch(5)), deeper, "distill.student.init")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InitError, match="junk.pt is not a readable torch weight file"):
        load_init(build_encoder(**_arch(5)), junk, "distill.student.init")


def test_a_frozen_teacher_of_another_class_count_is_refused_before_any_stage(tmp_path):
    """Before: a 1000-class TorchScript teacher passed the teacher stage and died in distill ("size of tensor a
    (1000) must match ... b (10)")."""
    from fdkd.pipeline import run

    ts = save_scripted(ConvEncoder(1, 1000, width=4, depth=1), tmp_path / "imagenet.ts")
    manifest = make_pairs(tmp_path / "pairs", 40)
    cfg = load_config(None, [f"runs_dir={tmp_path}/runs", f"data.cache_dir={tmp_path}/data", "name=frozen",
                             "data.source=manifest", f"data.manifest.path={manifest}",
                             "data.manifest.image_size=[16,16]", f"teacher.checkpoint={ts}"])
    with pytest.raises(ValueError, match=r"imagenet.ts has 1000 classes but the dataset has 10"):
        run.run(cfg)
    assert not cfg.run_dir.exists()  # refused before any stage: no run directory


def test_a_weight_file_replaced_at_the_same_path_redoes_the_stages_that_read_it(tmp_path):
    from fdkd.pipeline import run
    from fdkd.pipeline.run_manifest import RunManifest

    weights = tmp_path / "w.pth"
    torch.save(ConvEncoder(1, 5, width=4, depth=2).state_dict(), weights)
    cfg = load_config(None, [f"runs_dir={tmp_path}/runs", f"distill.student.init={weights}"])
    manifest = RunManifest.load(tmp_path / "runs")
    for name in ("dataset", "teacher.image.pt", "student.pt"):  # the stages' recorded inputs (stand-ins)
        manifest.data["artifacts"][name] = {"path": name, "sha256": "0" * 64}
    ctx = run.Ctx(cfg, manifest)
    before = {s: run._stage_key(ctx, s) for s in ("teacher", "distill", "export")}
    torch.save(ConvEncoder(1, 5, width=4, depth=2).state_dict(), weights)  # new weights, same path
    after = {s: run._stage_key(ctx, s) for s in ("teacher", "distill", "export")}
    assert before["distill"] != after["distill"]
    assert before["teacher"] == after["teacher"] and before["export"] == after["export"]
