"""Distillation objectives: each method is a visible weighted sum of named loss terms.

An objective is an ``nn.Module`` (it may own training-only parameters: projector, shared
classifiers, band heads; none of them ships) whose ``forward`` returns
``{term_name: (weight, value)}``; the trainer minimises sum(weight * value) and logs every term
by name. ``METHODS`` is the one table from ``distill.method`` to a class.

One module per method, each beside its loss in ``fdkd.pipeline.losses`` and its settings in
``fdkd.pipeline.config.distill``: ``base`` (the task term every method keeps, and ``none``: that term alone),
``pseudo`` (``pseudo`` and ``self-training``), ``kd``, ``feat``, ``dkd``, ``dist``, ``fd`` (FD-CMKD).
"""

from __future__ import annotations

from fdkd.pipeline.config import DistillConfig
from fdkd.pipeline.objectives.base import NoKD, Objective, Terms
from fdkd.pipeline.objectives.dist import DIST
from fdkd.pipeline.objectives.dkd import DecoupledKD
from fdkd.pipeline.objectives.fd import FDCMKD
from fdkd.pipeline.objectives.feat import FeatureMSE
from fdkd.pipeline.objectives.kd import LogitKD
from fdkd.pipeline.objectives.pseudo import PseudoLabels, SelfTraining

__all__ = ["Terms", "Objective", "NoKD", "SelfTraining", "PseudoLabels", "LogitKD", "FeatureMSE", "DecoupledKD",
           "DIST", "FDCMKD", "METHODS", "build_objective"]


METHODS: dict[str, type[Objective]] = {
    "none": NoKD,
    "self-training": SelfTraining,
    "pseudo": PseudoLabels,
    "kd": LogitKD,
    "feat": FeatureMSE,
    "dkd": DecoupledKD,
    "dist": DIST,
    "fd": FDCMKD,
}


def build_objective(method: str, d_student: int, d_teacher: int, num_classes: int,
                    cfg: DistillConfig) -> Objective:
    if method not in METHODS:
        raise ValueError(f"unknown distill.method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method](d_student, d_teacher, num_classes, cfg)
