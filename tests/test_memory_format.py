"""Training in NHWC (accel.channels_last) on the CPU: used where safe, refused where oneDNN would corrupt memory."""

import pytest
import torch

from fdkd.pipeline.accel import Accel, nhwc_hazard
from fdkd.pipeline.models.encoders import ConvEncoder


def test_the_hazard_is_a_narrow_strided_shortcut_only():
    assert "blocks.1.shortcut.0" in nhwc_hazard(ConvEncoder(1, 10, width=4, depth=2))
    assert nhwc_hazard(ConvEncoder(1, 10, width=4, depth=1)) is None  # no strided block
    assert nhwc_hazard(ConvEncoder(1, 10, width=8, depth=3)) is None
    assert nhwc_hazard(ConvEncoder(1, 10, width=16, depth=3, stem_stride=2)) is None  # the built-in student
    assert nhwc_hazard(ConvEncoder(1, 10, width=64, depth=3)) is None  # the built-in teacher


def _fit_nhwc(ds, width):
    from fdkd.pipeline.config import DistillConfig, OptimConfig
    from fdkd.pipeline.models.encoders import arch_dict, build_encoder
    from fdkd.pipeline.objectives import build_objective
    from fdkd.pipeline.train import Direction, accuracy, fit, predict, tensors

    x, y = tensors(ds)
    arch = arch_dict(DistillConfig().student.model_copy(update={"width": width, "depth": 2}), ds.x["audio"].shape[1:],
                     ds.num_classes)
    torch.manual_seed(0)
    student = build_encoder(**arch)
    formats = []  # per training step: did the blocks get NHWC activations (a one-channel input is both formats)
    def record(module, args):
        if module.training:
            formats.append(args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous())

    student.blocks.register_forward_pre_hook(record)
    d = Direction("student", student, build_objective("none", student.num_features, student.num_features,
                                                      ds.num_classes, DistillConfig()), x["audio"])
    records = fit([d], y, ds.split, OptimConfig(epochs=1, batch_size=64), seed=0,
                  acc=Accel(torch.device("cpu"), channels_last=True))
    val = ds.indices("val")
    assert records[-1]["val_acc"] == pytest.approx(accuracy(predict(student, x["audio"][val]), y[val]))
    assert student.stem[0].weight.is_contiguous()  # handed back in NCHW, as export expects
    return set(formats)


def test_fit_trains_in_nhwc_where_safe_and_in_nchw_where_onednn_would_corrupt_memory(tiny_dataset):
    assert _fit_nhwc(tiny_dataset, 8) == {True}  # every training batch reached the student in NHWC
    # width 4: a 4->8 strided 1x1 shortcut. In NHWC this process would abort (heap corruption); it trains in NCHW
    assert _fit_nhwc(tiny_dataset, 4) == {False}
