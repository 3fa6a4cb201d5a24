"""Paired two-modality data: the built-in avdigits/avmnist/avblend sets and user manifests.

``prepare(cfg)`` builds (or finds in the cache) the dataset the config names (``fdkd.pipeline.data.store``: tar
shards of the files, an index and ``dataset.json``, whose path it returns); ``load(cfg)`` returns it as a
:class:`~fdkd.pipeline.data.dataset.PairedDataset`, dense or streamed (``data.in_memory``, ``data.memory_mb``).
"""

from __future__ import annotations

from pathlib import Path

from fdkd.pipeline.config import RunConfig


def prepare(cfg: RunConfig, progress=None) -> Path:
    if cfg.data.source == "avdigits":
        from fdkd.pipeline.data import avdigits

        return avdigits.build(cfg.data.avdigits, cfg.data.cache_dir, progress=progress)
    if cfg.data.source == "avblend":
        from fdkd.pipeline.data import avblend

        return avblend.build(cfg.data.avblend, cfg.data.cache_dir, progress=progress)
    from fdkd.pipeline.data import manifest

    path = manifest.build(cfg.data.manifest, cfg.data.cache_dir, cfg.student_modality)
    require_labels(cfg, path)
    return path


def require_labels(cfg: RunConfig, path: Path) -> None:
    """Refuse, before any training, a dataset whose training split has no labelled row (a manifest whose training
    rows all have an empty label) unless the config loads the teacher: a teacher trains on labelled rows only."""
    from fdkd.pipeline.data.store import Store

    store = Store(path)
    y, split = store.labels, store.split
    if (y[split == 0] >= 0).any():
        return
    where = f"{cfg.data.manifest.path}" if cfg.data.source == "manifest" else f"dataset {path}"
    head = (f"{where}: no training row has a label ({int((split == 0).sum())} unlabelled training pairs), so "
            "there is nothing to train a teacher or a labelled-only student on")
    if cfg.teacher.checkpoint is None:
        raise ValueError(f"{head}; set teacher.checkpoint to a trained {cfg.teacher.modality} teacher (it then "
                         "supervises every pair), or label some training rows")
    if cfg.distill.bidirectional:
        raise ValueError(f"{head}; distill.bidirectional trains a second teacher on the student's modality: "
                         "turn it off")
    if cfg.distill.method in ("none", "self-training", "auto"):
        raise ValueError(f"{head}; distill.method {cfg.distill.method!r} needs labelled training rows (none and "
                         "self-training train on them, auto compares every candidate with none): pick a teacher "
                         "method (kd, fd, pseudo, ...)")


def load(cfg: RunConfig, progress=None):
    """The dataset with the student's labels (``data.labelled``, ``data.label_noise``: ``.labels``)."""
    from fdkd.pipeline.data.dataset import load_dataset
    from fdkd.pipeline.data.labels import student_labels

    ds = load_dataset(prepare(cfg, progress), cfg.data.in_memory, cfg.data.memory_mb)
    seed = cfg.seed if cfg.data.label_seed is None else cfg.data.label_seed
    y, info = student_labels(ds.y, ds.split, ds.num_classes, cfg.data.labelled, cfg.data.label_noise, seed)
    ds.teacher_y, ds.y, ds.labels = ds.y, y, info
    return ds
