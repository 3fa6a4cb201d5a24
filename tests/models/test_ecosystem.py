"""Backbones from the ecosystem, weights from a file (issue 30, item 1): timm and torchvision key layouts,
``.safetensors``, fdkd checkpoints, the classifier replaced (and said), any other mismatch named, the stem
adapted to one channel, the teacher's own input normalisation, feature taps by module name."""

from __future__ import annotations

import pytest

timm = pytest.importorskip("timm", reason="needs the [timm] extra (.ci/run runs this from .venv-models)")
tv = pytest.importorskip("torchvision", reason="needs the [timm] extra")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fdkd.pipeline.config import ConfigError, ModelConfig, load_config  # noqa: E402
from fdkd.pipeline.models.checkpoint import model_from_checkpoint, save_checkpoint  # noqa: E402
from fdkd.pipeline.models.encoders import arch_dict, build_encoder  # noqa: E402
from fdkd.pipeline.models.init import InitError, load_init  # noqa: E402
from fdkd.serving.preprocess import ImageFrontend  # noqa: E402

torch.manual_seed(0)


def _enc(arch: str, classes: int = 5, chans: int = 3, **kw):
    return build_encoder(arch, chans, classes, **kw)


def test_a_timm_state_dict_loads_and_its_1000_class_head_is_replaced(tmp_path):
    src = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)  # timm's own key layout: conv1.weight, ..., fc.weight
    enc, said = _enc("timm:resnet18"), []
    rec = load_init(enc, path, "teacher.model.init", say=said.append)
    assert rec["head_replaced"] and said == ["teacher.model.init: classifier fc replaced: 1000 classes in the file, "
                                             "5 in the data"]
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(enc.model.state_dict()[k], v), k
    assert enc.model.fc.weight.shape == (5, 512)


def test_safetensors_and_torchvision_layouts_and_a_one_channel_stem(tmp_path):
    from safetensors.torch import save_file

    src = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=1000)
    st = tmp_path / "mnv3.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(st))
    enc, said = _enc("timm:mobilenetv3_small_100", chans=1), []
    load_init(enc, st, "distill.student.init", say=said.append)
    assert any("stem conv_stem.weight summed over its 3 input channels" in s for s in said), said
    assert torch.allclose(enc.model.conv_stem.weight, src.conv_stem.weight.sum(1, keepdim=True))
    assert torch.equal(enc.model.blocks[2][0].conv_pw.weight, src.blocks[2][0].conv_pw.weight)

    tv_src = tv.models.mobilenet_v3_small(num_classes=1000)
    pth = tmp_path / "mobilenet_v3_small.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv_src.state_dict().items()}}, pth)  # DDP-wrapped
    enc, said = _enc("torchvision:mobilenet_v3_small", chans=1), []
    rec = load_init(enc, pth, "distill.student.init", say=said.append)
    assert rec["head_replaced"] and "classifier classifier.3 replaced: 1000 classes in the file, 5 in the data" in \
        " ".join(said)
    assert torch.equal(enc.model.features[3].block[0][0].weight, tv_src.features[3].block[0][0].weight)


def test_an_fdkd_checkpoint_of_an_ecosystem_encoder_round_trips(tmp_path):
    enc = _enc("timm:efficientnet_lite0", classes=4)
    arch = {"arch": "timm:efficientnet_lite0", "in_chans": 3, "num_classes": 4, "width": 16, "depth": 2,
            "stem_stride": 1, "input_norm": None, "tap_module": None}
    path = tmp_path / "student.pt"
    save_checkpoint(path, enc, arch)
    other = _enc("timm:efficientnet_lite0", classes=4)
    assert not load_init(other, path, "distill.student.init")["head_replaced"]
    x = torch.randn(2, 3, 32, 32)
    enc.eval(), other.eval()
    assert torch.equal(enc(x), other(x))
    ckpt = torch.load(path, weights_only=True)
    assert torch.equal(model_from_checkpoint(ckpt)(x), enc(x))


def test_any_other_mismatch_names_the_file_and_the_first_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), path)
    with pytest.raises(InitError) as e:
        load_init(_enc("timm:resnet34"), path, "teacher.model.init")
    msg = str(e.value)
    assert msg.startswith(f"teacher.model.init: {path} does not fit timm:resnet34; missing: layer1.2.conv1.weight")
    want = r"shape mismatch: blocks.0.0.conv_pw.weight \(16, 16, 1, 1\) in the file, \(8, 16, 1, 1\) in the model"
    with pytest.raises(InitError, match=want + r".*\(\+188 more\)"):
        mnv3 = tmp_path / "mnv3.pth"
        torch.save(timm.create_model("mobilenetv3_small_100", num_classes=5).state_dict(), mnv3)
        load_init(_enc("timm:mobilenetv3_small_050"), mnv3, "distill.student.init")
    # a frozen teacher's weights (teacher.checkpoint + checkpoint_arch): the head must fit too
    with pytest.raises(InitError, match=r"shape mismatch: fc.weight \(1000, 512\) in the file, \(5, 512\)"):
        load_init(_enc("timm:resnet18"), path, "teacher.checkpoint", replace_head=False)


def test_config_takes_both_ecosystems_and_refuses_others():
    cfg = load_config(None, ["teacher.model.arch=timm:resnet18", "distill.student.arch=torchvision:mobilenet_v3_small"])
    assert cfg.distill.student.arch == "torchvision:mobilenet_v3_small"
    with pytest.raises(ConfigError, match="arch must be 'conv', 'timm:<name>' or 'torchvision:<name>'"):
        load_config(None, ["distill.student.arch=keras:mobilenet"])
    with pytest.raises(ValueError, match="torchvision has no architecture 'nonet'"):
        _enc("torchvision:nonet")
    with pytest.raises(ValueError, match="has no module 'layer9' to tap"):
        _enc("timm:resnet18", tap_module="layer9")


def test_the_teacher_reads_its_own_normalisation_independent_of_the_student():
    fe = ImageFrontend(32, 32, 3, 255.0, mean=0.4, std=0.3)  # fdkd's scalar standardisation of the data
    teacher_cfg = ModelConfig(arch="timm:resnet18", init="w.pth")  # init: norm auto -> the model's own
    arch = arch_dict(teacher_cfg, (3, 32, 32), 5, "image", fe)
    mean, std = timm.models.get_pretrained_cfg("resnet18").mean, timm.models.get_pretrained_cfg("resnet18").std
    assert arch["input_norm"]["mean"] == pytest.approx(mean) and arch["input_norm"]["std"] == pytest.approx(std)
    student = arch_dict(ModelConfig(arch="timm:mobilenetv3_small_100"), (3, 32, 32), 5, "image", fe)
    assert student["input_norm"] is None  # no init: fdkd's standardisation, as the served preprocessing
    raw = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32)).astype(np.float32)
    x = torch.from_numpy(fe(raw))
    enc = build_encoder(**arch)
    want = (torch.from_numpy(raw) / 255.0 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(enc.normalise(x), want, atol=1e-5)
    own = arch_dict(ModelConfig(arch="timm:resnet18", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)), (3, 32, 32), 5,
                    "image", fe)
    assert own["input_norm"]["source"] == "setting"
    with pytest.raises(ValueError, match="mean/std have 3/3 values but the image input has 1 channels"):
        arch_dict(ModelConfig(arch="timm:resnet18", mean=(0.5,) * 3, std=(0.2,) * 3), (1, 32, 32), 5, "image", fe)


@pytest.mark.parametrize(("arch", "tap", "dim"), [("timm:resnet18", "layer3", 256),
                                                    ("torchvision:mobilenet_v3_small", "features.8", 48)])
def test_feature_taps_by_module_name_and_the_features_head_split(arch, tap, dim):
    enc = _enc(arch, chans=1, tap_module=tap).eval()
    x = torch.randn(3, 1, 40, 48)
    with torch.no_grad():
        f_head, f_tap = enc.forward_taps(x)
        assert f_tap.shape == (3, dim) and f_head.shape == (3, enc.num_features)
        assert torch.allclose(enc.forward_head(enc.forward_features(x)), enc(x), atol=1e-6)
        assert torch.equal(f_head, enc.forward_features(x))
    assert not enc._forward_hooks and all(not m._forward_hooks and not m._forward_pre_hooks
                                          for m in enc.modules())  # hooks never outlive the call
