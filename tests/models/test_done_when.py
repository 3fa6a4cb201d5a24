"""Issue 30's first done-when line: ``fdkd run`` with ``teacher.model.arch: timm:resnet18``, ``teacher.model.init``
a 1000-class state dict (made here with timm, random weights, saved to a file: nothing is downloaded) and
``distill.student.arch: timm:mobilenetv3_small_100`` ends with a validated student whose report names both
architectures and the init file's sha256. The student starts from a file too (a 1000-class, 3-channel
mobilenetv3 state dict: its head replaced, its stem summed for the 1-channel log-mel)."""

from __future__ import annotations

import hashlib

import pytest

timm = pytest.importorskip("timm", reason="needs the [timm] extra (.ci/run runs this from .venv-models)")

import torch  # noqa: E402

from tests.models.runs import fdkd_run  # noqa: E402


@pytest.mark.slow
def test_resnet18_teacher_from_a_1000_class_file_teaches_a_mobilenetv3_student(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=1000).state_dict(), weights)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    student_weights = tmp_path / "mnv3.pth"
    torch.save(timm.create_model("mobilenetv3_small_100", num_classes=1000).state_dict(), student_weights)
    validation, text, run_dir = fdkd_run(
        tmp_path, "done", "data.manifest.image_channels=3", "teacher.model.arch=timm:resnet18",
        f"teacher.model.init={weights}", "teacher.model.pretrained=true", "teacher.optim.epochs=3",
        "distill.student.arch=timm:mobilenetv3_small_100", f"distill.student.init={student_weights}",
        "distill.method=kd")
    assert validation["passed"] and "validation PASSED" in text
    assert "teacher.model.init: classifier fc replaced: 1000 classes in the file, 4 in the data" in text
    models = validation["models"]
    assert models["teacher"]["arch"] == "timm:resnet18" and models["student"]["arch"] == "timm:mobilenetv3_small_100"
    assert models["teacher"]["init"]["sha256"] == sha and models["teacher"]["init"]["head_replaced"]
    # the teacher read its input in timm's ImageNet normalisation, the student in fdkd's
    assert models["teacher"]["input_norm"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert models["student"]["input_norm"] is None  # audio: norm auto keeps fdkd's standardisation
    assert models["student"]["init"]["sha256"] == hashlib.sha256(student_weights.read_bytes()).hexdigest()
    assert "distill.student.init: stem conv_stem.weight summed over its 3 input channels" in text
    report = (run_dir / "report.md").read_text()
    assert "teacher `timm:resnet18` initialised from" in report and sha in report
    assert f"student `timm:mobilenetv3_small_100` initialised from `{student_weights}`" in report
    cfg = (run_dir / "config.yaml").read_text()
    assert "lr: 0.005" in cfg and "warmup_epochs: 1.0" in cfg  # the fine-tuning defaults of an init teacher
