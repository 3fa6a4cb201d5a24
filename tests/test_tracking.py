"""Experiment tracking: TensorBoard event files from every training stage, read back and compared with
metrics.jsonl (the source of truth); MLflow logged to a local ``file:`` store (skipped without mlflow)."""

from __future__ import annotations

import json

import pytest

from fdkd import artifacts
from fdkd.pipeline.config import load_config
from tests.conftest import SERVED_OVERRIDES, tiny_overrides


def _tb_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tensorboard_event_files_of_every_training_stage(tiny_cfg, tiny_dataset):
    pytest.importorskip("tensorboard")
    from fdkd.pipeline import distill, teacher

    cfg = load_config(None, [*tiny_overrides(tiny_cfg.runs_dir.parent), "name=tb", "threads=1",
                             "tracking.tensorboard=on", "distill.method=kd", "distill.optim.epochs=3"])
    teacher.run(cfg)
    distill.run(cfg)
    for stage, metrics in (("teacher.image", artifacts.TEACHER_METRICS.format(modality="image")),
                           ("distill", artifacts.METRICS)):
        scalars = _tb_scalars(cfg.run_dir / artifacts.TENSORBOARD.format(stage=stage))
        records = _jsonl(cfg.run_dir / metrics)
        assert records
        for rec in records:
            for key in ("val_acc", "train_acc", "lr"):
                tag = f"{rec['direction']}/{key}"
                assert (rec["epoch"], pytest.approx(rec[key], rel=1e-6)) in scalars[tag], (tag, scalars[tag])
        if stage == "distill":
            assert [s for s, _ in scalars["student/loss/kd"]] == [0, 1, 2]  # every loss term, each epoch once


def test_tensorboard_off_and_on_without_the_package(tiny_cfg, monkeypatch):
    import importlib.util

    from fdkd.pipeline import tracking

    cfg = load_config(None, ["tracking.tensorboard=off"])
    assert not tracking.tensorboard_on(cfg.tracking)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert not tracking.tensorboard_on(load_config(None, []).tracking)  # auto: quietly absent
    with pytest.raises(RuntimeError, match="tracking.tensorboard is 'on'.*fdkd\\[tensorboard\\]"):
        tracking.tensorboard_on(load_config(None, ["tracking.tensorboard=on"]).tracking)


def test_mlflow_needs_a_tracking_uri_in_auto(monkeypatch):
    from fdkd.pipeline import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert not tracking.mlflow_on(load_config(None, []).tracking)
    assert not tracking.mlflow_on(load_config(None, ["tracking.mlflow=off"]).tracking)


def test_mlflow_logs_a_whole_run_to_a_local_file_store(tiny_cfg, tiny_teachers, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from fdkd.pipeline import run

    store = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x refuses a file: store without it
    cfg = load_config(None, [*tiny_overrides(tiny_cfg.runs_dir.parent), *SERVED_OVERRIDES, "name=mlflow",
                             "threads=1", "tracking.mlflow_experiment=fdkd-test", "distill.method=kd",
                             "distill.optim.epochs=3"])
    run.run(cfg)
    client = MlflowClient(tracking_uri=store)
    (found,) = client.search_runs([client.get_experiment_by_name("fdkd-test").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "mlflow"
    params = found.data.params
    assert params["distill.optim.epochs"] == "3" and params["distill.method"] == "kd" and params["seed"] == "0"
    history = client.get_metric_history(found.info.run_id, "distill/student/val_acc")
    records = _jsonl(cfg.run_dir / artifacts.METRICS)
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        [(r["epoch"], pytest.approx(r["val_acc"])) for r in records]
    assert client.get_metric_history(found.info.run_id, "teacher.image/teacher_image_/val_acc")
    names = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {artifacts.REPORT, artifacts.VALIDATION, "config.yaml"} <= names
    validation = json.loads((cfg.run_dir / artifacts.VALIDATION).read_text())
    assert validation["distill"]["training"]["stop"] == "epochs"  # and why training stopped, in validation.json
    assert "## Training" in (cfg.run_dir / artifacts.REPORT).read_text()
