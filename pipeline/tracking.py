"""Experiment tracking beside ``metrics.jsonl`` (the source of truth): TensorBoard and MLflow (``tracking:``).

- ``StageLog``: a training stage's per-epoch writer. Each record goes to the stage's ``metrics.jsonl`` and, where
  ``tracking.tensorboard`` allows (the [tensorboard] extra, through ``torch.utils.tensorboard``), as scalars to the
  event files under ``<run>/tensorboard/<stage>/`` (tag ``<direction>/<metric>``, step = epoch). A resumed stage
  starts its file from the saved epochs' records and its event file with ``purge_step`` at the first new epoch,
  so TensorBoard shows each epoch once.
- ``mlflow_run``: one MLflow run per ``fdkd run`` where ``tracking.mlflow`` allows (mlflow installed and
  ``MLFLOW_TRACKING_URI`` set, or "on"): the resolved config as params (and ``config.yaml`` as an artifact), every
  training stage's ``metrics.jsonl`` as per-epoch metrics (``<stage>/<direction>/<metric>``), and ``report.md``
  and ``validation.json`` as artifacts once they exist. A failed run ends FAILED, with whatever it wrote.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from fdkd import artifacts
from fdkd.pipeline.config import RunConfig, TrackingConfig, config_to_dict


def tensorboard_on(t: TrackingConfig) -> bool:
    """Whether to write TensorBoard event files ("on" without the package is an error naming the setting)."""
    if t.tensorboard == "off":
        return False
    installed = importlib.util.find_spec("tensorboard") is not None
    if t.tensorboard == "on" and not installed:
        raise RuntimeError("tracking.tensorboard is 'on' but the tensorboard package is not installed: "
                           "pip install 'fdkd[tensorboard]', or set tracking.tensorboard=auto")
    return installed


def mlflow_on(t: TrackingConfig) -> bool:
    """Whether to log to MLflow: "auto" when mlflow is installed and MLFLOW_TRACKING_URI is set."""
    if t.mlflow == "off":
        return False
    installed = importlib.util.find_spec("mlflow") is not None
    if t.mlflow == "on" and not installed:
        raise RuntimeError("tracking.mlflow is 'on' but mlflow is not installed: pip install 'fdkd[mlflow]', or set "
                           "tracking.mlflow=auto")
    return installed and (t.mlflow == "on" or bool(os.environ.get("MLFLOW_TRACKING_URI")))


def _scalars(rec: dict) -> dict[str, float]:
    """A metrics.jsonl record's numbers by metric name (bookkeeping fields left out)."""
    return {k: float(v) for k, v in rec.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("epoch", "world_size")}


class StageLog:
    """One training stage's per-epoch log: ``metrics.jsonl`` (rewritten from ``resumed``), TensorBoard if on."""

    def __init__(self, cfg: RunConfig, stage: str, metrics_path: Path, resumed: list[dict] = ()) -> None:
        from fdkd.pipeline.train import reset_log

        self.jsonl = reset_log(metrics_path, resumed)
        self.writer = None
        if tensorboard_on(cfg.tracking):
            from torch.utils.tensorboard import SummaryWriter

            first = max((r["epoch"] + 1 for r in resumed), default=0)
            # purge_step: events of epochs >= first left in earlier event files (a killed run's) are dropped on read
            self.writer = SummaryWriter(str(cfg.run_dir / artifacts.TENSORBOARD.format(stage=stage)),
                                        purge_step=first or None)

    def __call__(self, rec: dict) -> None:
        self.jsonl(rec)
        if self.writer is not None:
            for k, v in _scalars(rec).items():
                self.writer.add_scalar(f"{rec.get('direction', 'train')}/{k}", v, rec["epoch"])
            self.writer.flush()  # each epoch on disk as it ends: a killed stage keeps what it logged

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


_MLFLOW_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")  # what MLflow accepts in metric and param names


def _flat(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list | tuple | bool) or v is None else str(v)
    return out


class MlflowLog:
    """The active MLflow run of one ``fdkd run``."""

    def __init__(self, cfg: RunConfig) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.cfg, self.mlflow, self.client = cfg, mlflow, MlflowClient()
        self.run_id = mlflow.active_run().info.run_id
        self.logged: set[str] = set()

    def params(self) -> None:
        # MLflow caps a param value (500 characters in older servers): longer values are cut, config.yaml has them
        items = [(k, v if len(v) <= 500 else v[:497] + "...") for k, v in _flat(config_to_dict(self.cfg)).items()]
        for i in range(0, len(items), 100):
            self.mlflow.log_params(dict(items[i : i + 100]))

    def stage_metrics(self, stage: str, path: Path) -> None:
        """Every record of a training stage's metrics.jsonl, once per run, as ``<stage>/<direction>/<metric>``."""
        if str(path) in self.logged or not path.exists():
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            direction = _MLFLOW_KEY.sub("_", str(rec.get("direction", "train")))
            metrics += [Metric(_MLFLOW_KEY.sub("_", f"{stage}/{direction}/{k}"), v, now, int(rec["epoch"]))
                        for k, v in _scalars(rec).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
        self.logged.add(str(path))

    def after_stage(self, stage: str) -> None:
        """After ``fdkd run``'s stage ``stage`` (run or skipped): its training metrics."""
        rd = self.cfg.run_dir
        if stage == "teacher":
            for p in sorted(rd.glob(artifacts.TEACHER_METRICS.format(modality="*"))):
                self.stage_metrics(p.name.removesuffix(".metrics.jsonl"), p)
        elif stage == "distill":
            self.stage_metrics("distill", rd / artifacts.METRICS)

    def files(self) -> None:
        for name in ("config.yaml", artifacts.REPORT, artifacts.VALIDATION):
            if (self.cfg.run_dir / name).exists():
                self.mlflow.log_artifact(str(self.cfg.run_dir / name))


@contextlib.contextmanager
def mlflow_run(cfg: RunConfig) -> Iterator[MlflowLog | None]:
    """``with mlflow_run(cfg) as ml:`` an MLflow run around ``fdkd run`` (``ml`` None when tracking is off)."""
    if not mlflow_on(cfg.tracking):
        yield None
        return
    import mlflow

    mlflow.set_experiment(cfg.tracking.mlflow_experiment)
    with mlflow.start_run(run_name=cfg.name):  # ends FAILED when the body raises
        ml = MlflowLog(cfg)
        ml.params()
        try:
            yield ml
        finally:
            ml.files()
