"""Student audio augmentation: seeded determinism, train rows only, untouched val/test inputs, real effects."""

import numpy as np
import pytest
import torch

from fdkd.pipeline.augment import AudioAugmenter, student_augmenter
from fdkd.pipeline.config import AudioAugmentConfig

OFF = AudioAugmentConfig(speed_p=0, pitch_p=0, warp_p=0, gain_p=0, noise_p=0, time_masks=0, freq_masks=0)


@pytest.fixture(scope="module")
def ds(tiny_dataset):
    return tiny_dataset


def _rows(ds, split="train", n=32):
    return torch.from_numpy(ds.indices(split)[:n])


def _feats(ds, rows):
    """The batch's clean features: what the training loop hands an augmenter with its rows."""
    return torch.from_numpy(ds.x["audio"][rows.numpy()])


def test_same_seed_same_batches_other_seed_differs(ds):
    a, b = (student_augmenter(AudioAugmentConfig(), ds, "audio", seed=5) for _ in range(2))
    c = student_augmenter(AudioAugmentConfig(), ds, "audio", seed=6)
    rows = _rows(ds)
    x = _feats(ds, rows)
    first_a, first_b = a(rows, x), b(rows, x)
    assert torch.equal(first_a, first_b) and torch.equal(a(rows, x), b(rows, x))  # same calls, same tensors
    assert not torch.equal(first_a, a(rows, x))  # a fresh draw every batch
    assert not torch.equal(first_a, c(rows, x))
    assert first_a.shape == (len(rows), *ds.x["audio"].shape[1:]) and first_a.dtype == torch.float32
    assert torch.isfinite(first_a).all()


def test_all_transforms_off_is_the_identity(ds):
    rows = _rows(ds)
    x = student_augmenter(OFF, ds, "audio", seed=0)(rows, _feats(ds, rows)).numpy()
    np.testing.assert_allclose(x, ds.x["audio"][rows.numpy()], atol=2e-3)


def test_each_transform_changes_the_input(ds):
    rows = _rows(ds)
    clean = torch.from_numpy(ds.x["audio"][rows.numpy()])
    for update in ({"speed_p": 1.0, "speed": (1.1, 1.1)}, {"warp_p": 1.0},
                   {"pitch_p": 1.0, "pitch_semitones": (2.0, 2.0)},
                   {"gain_p": 1.0, "gain_db": (6.0, 6.0)}, {"noise_p": 1.0, "noise_snr_db": (0.0, 0.0)},
                   {"time_masks": 1, "time_mask_max": 20}, {"freq_masks": 1, "freq_mask_max": 8}):
        x = student_augmenter(OFF.model_copy(update=update), ds, "audio", seed=0)(rows, clean)
        assert float((x - clean).abs().mean()) > 1e-2, update
    # gain is exact in the mel-power domain: +6 dB lifts every cell above the log floor by log(10**0.6)
    fe = ds.frontends["audio"]
    up = student_augmenter(OFF.model_copy(update={"gain_p": 1.0, "gain_db": (6.0, 6.0)}), ds, "audio",
                           seed=0)(rows, clean)
    loud = clean * fe.std + fe.mean > np.log(fe.log_floor) + 6
    shift = ((up - clean) * fe.std)[loud]
    np.testing.assert_allclose(shift.numpy(), np.log(10**0.6), atol=1e-2)
    # pitch up moves energy to higher mel bins (centre of mass along the mel axis rises)
    pitch = student_augmenter(OFF.model_copy(update={"pitch_p": 1.0, "pitch_semitones": (3.0, 3.0)}), ds,
                              "audio", seed=0)(rows, clean)
    mel = torch.arange(clean.shape[2], dtype=torch.float32)[None, None, :, None]

    def centre(x):
        w = (x * fe.std + fe.mean).exp()
        return float((w * mel).sum() / w.sum())

    assert centre(pitch) > centre(clean) + 0.2


def test_only_training_rows_and_never_the_dataset(ds):
    before = {m: a.copy() for m, a in ds.x.items()}
    aug = student_augmenter(AudioAugmentConfig(), ds, "audio", seed=0)
    for split in ("val", "test"):
        with pytest.raises(KeyError, match="not a training row"):
            aug(_rows(ds, split, 4), _feats(ds, _rows(ds, split, 4)))
    aug(_rows(ds), _feats(ds, _rows(ds)))
    for m, a in ds.x.items():
        np.testing.assert_array_equal(a, before[m])  # features of every split untouched
    assert student_augmenter(AudioAugmentConfig(), ds, "image", seed=0) is None  # image students: off
    assert student_augmenter(AudioAugmentConfig(enabled=False), ds, "audio", seed=0) is None


def test_fit_feeds_augmented_train_batches_and_clean_validation(ds):
    """fit() asks the augmenter for training rows only; validation reads the un-augmented features."""
    from fdkd.pipeline.config import DistillConfig, OptimConfig
    from fdkd.pipeline.models.encoders import arch_dict, build_encoder
    from fdkd.pipeline.objectives import build_objective
    from fdkd.pipeline.train import Direction, fit, tensors

    x, y = tensors(ds)
    asked = []
    inner = student_augmenter(AudioAugmentConfig(), ds, "audio", seed=0)

    def recording(rows, x):
        asked.append(rows.clone())
        assert torch.equal(x, torch.from_numpy(ds.x["audio"][rows.numpy()]))  # the batch's own clean features
        return inner(rows, x)

    arch = arch_dict(DistillConfig().student.model_copy(update={"width": 4, "depth": 1}),
                     ds.x["audio"].shape[1:], ds.num_classes)
    student = build_encoder(**arch)
    d = Direction("student", student, build_objective("none", student.num_features, student.num_features,
                                                      ds.num_classes, DistillConfig()), x["audio"],
                  augment=recording)
    records = fit([d], y, ds.split, OptimConfig(epochs=1, batch_size=64), seed=0)
    seen = torch.cat(asked).numpy()
    assert sorted(seen.tolist()) == sorted(ds.indices("train").tolist())  # every train row once, nothing else
    from fdkd.pipeline.train import accuracy, predict

    val = ds.indices("val")
    assert records[-1]["val_acc"] == pytest.approx(accuracy(predict(student, x["audio"][val]), y[val]))


def test_config_rejects_bad_ranges():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="range must be"):
        AudioAugmentConfig(speed=(1.2, 0.8))
    with pytest.raises(ValidationError, match="positive"):
        AudioAugmentConfig(speed=(0.0, 1.0))
    with pytest.raises(ValidationError):
        AudioAugmentConfig(noise_p=1.5)
    with pytest.raises(ValueError, match="distinct row"):
        AudioAugmenter(np.array([3, 3]), _fe(), OFF, 0)


def _fe():
    from fdkd.serving.preprocess import AudioFrontend

    return AudioFrontend()
