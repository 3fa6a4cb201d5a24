"""The weights' moving average (optim.ema_decay): its arithmetic, and that fit() validates and ships it."""

import pytest
import torch
from torch import nn

from fdkd.pipeline.ema import WeightAverage


def _model(w: float) -> nn.Module:
    m = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        m[0].weight.fill_(w)
    return m


def test_average_follows_the_warmed_up_decay_and_copies_integer_buffers():
    m = _model(0.0)
    avg = WeightAverage(m, decay=0.5)
    assert [avg.decay_at(s) for s in (0, 1, 8, 100)] == [0.1, 2 / 11, 0.5, 0.5]  # min(d, (1+s)/(10+s))
    expected = 0.0
    for step, w in enumerate((1.0, 2.0, 4.0)):
        with torch.no_grad():
            m[0].weight.fill_(w)
        m[1].num_batches_tracked.fill_(7 + step)
        avg.update(m)
        d = min(0.5, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * w
        assert avg.state["0.weight"].item() == pytest.approx(expected)
        assert avg.state["1.num_batches_tracked"].item() == 7 + step  # integers are copied, not averaged
    assert m[0].weight.item() == 4.0  # the model's own weights are untouched


def test_swapped_in_lends_the_average_and_gives_the_weights_back():
    m = _model(3.0)
    avg = WeightAverage(m, decay=0.9)
    avg.state["0.weight"].fill_(-1.0)
    with avg.swapped_in(m) as inside:
        assert inside[0].weight.item() == -1.0
    assert m[0].weight.item() == 3.0
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(m, decay=1.0)


def _student(ds) -> nn.Module:
    from fdkd.pipeline.config import DistillConfig
    from fdkd.pipeline.models.encoders import arch_dict, build_encoder

    arch = arch_dict(DistillConfig().student.model_copy(update={"width": 4, "depth": 1}), ds.x["audio"].shape[1:],
                     ds.num_classes)
    torch.manual_seed(0)
    return build_encoder(**arch)


def _fit(ds, ema_decay):
    from fdkd.pipeline.config import DistillConfig, OptimConfig
    from fdkd.pipeline.objectives import build_objective
    from fdkd.pipeline.train import Direction, fit, tensors

    x, y = tensors(ds)
    student = _student(ds)
    d = Direction("student", student, build_objective("none", student.num_features, student.num_features,
                                                      ds.num_classes, DistillConfig()), x["audio"])
    records = fit([d], y, ds.split, OptimConfig(epochs=1, batch_size=64, ema_decay=ema_decay), seed=0)
    return d, records


def test_fit_validates_and_ships_the_average_of_the_training_trajectory(tiny_dataset, monkeypatch):
    from fdkd.pipeline.train import accuracy, batch_bounds, predict, tensors

    plain, plain_records = _fit(tiny_dataset, None)
    seen = []  # every state the average is updated from, in order
    update = WeightAverage.update
    monkeypatch.setattr(WeightAverage, "update", lambda self, model: (
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()}), update(self, model))[1])
    averaged, records = _fit(tiny_dataset, 0.9)
    assert len(seen) == len(batch_bounds(len(tiny_dataset.indices("train")), 64))  # after every optimizer step
    replay = {k: v.detach().clone() for k, v in _student(tiny_dataset).state_dict().items()}  # the initial weights
    for step, state in enumerate(seen):
        d = min(0.9, (1 + step) / (10 + step))
        for k, v in state.items():
            replay[k] = d * replay[k] + (1 - d) * v if v.dtype.is_floating_point else v.clone()
    for k, v in averaged.best_state.items():
        torch.testing.assert_close(v, replay[k])
    # the raw trajectory is the plain run's: the average does not steer training, it is only what is kept
    key = "blocks.0.conv1.weight"
    torch.testing.assert_close(seen[-1][key], plain.student.state_dict()[key])
    assert not torch.allclose(averaged.best_state[key], plain.best_state[key])
    # the recorded validation accuracy is the shipped (averaged) student's
    x, y = tensors(tiny_dataset)
    val = tiny_dataset.indices("val")
    assert records[-1]["val_of"] == "ema" and "val_of" not in plain_records[-1]
    assert records[-1]["val_acc"] == pytest.approx(accuracy(predict(averaged.student, x["audio"][val]), y[val]))
