"""Paired two-modality data: the built-in avdigits/avmnist/avblend sets and user manifests.

``prepare(cfg)`` builds (or finds in the cache) the dataset file the config names;
``load(cfg)`` returns it as a :class:`~pipeline.data.dataset.PairedDataset`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import RunConfig


def prepare(cfg: RunConfig, progress=None) -> Path:
    if cfg.data.source == "avdigits":
        from pipeline.data import avdigits

        return avdigits.build(cfg.data.avdigits, cfg.data.cache_dir, progress=progress)
    if cfg.data.source == "avblend":
        from pipeline.data import avblend

        return avblend.build(cfg.data.avblend, cfg.data.cache_dir, progress=progress)
    from pipeline.data import manifest

    return manifest.build(cfg.data.manifest, cfg.data.cache_dir)


def load(cfg: RunConfig, progress=None):
    """The dataset with the student's labels (``data.labelled``, ``data.label_noise``: ``pipeline.data.labels``)."""
    from pipeline.data.dataset import load_dataset
    from pipeline.data.labels import student_labels

    ds = load_dataset(prepare(cfg, progress))
    seed = cfg.seed if cfg.data.label_seed is None else cfg.data.label_seed
    y, info = student_labels(ds.y, ds.split, ds.num_classes, cfg.data.labelled, cfg.data.label_noise, seed)
    ds.teacher_y, ds.y, ds.labels = ds.y, y, info
    return ds
