"""The in-memory paired dataset every training stage consumes, and its on-disk form.

A dataset file (``.npz``, written by ``pipeline.data.avdigits`` or ``pipeline.data.manifest``)
holds raw pixels and raw waveforms, labels, splits and a JSON ``meta`` record. Loading fits the
frontends' standardisation on the training split and computes the features with
``serving.preprocess`` (the exact numpy code the server runs).

Split ids: 0 train, 1 val, 2 test, and 3 ``test_unseen_accent`` (built-in audio only: clips in
eSpeak NG accents that no other split hears; absent when the file has none). Every consumer
that selects train/val/test by id ignores split 3.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.preprocess import AudioFrontend, ImageFrontend, frontend_from_dict

SPLITS = ("train", "val", "test")
EXTRA_SPLITS = ("test_unseen_accent",)  # split id 3 onwards: extra evaluation-only splits
ALL_SPLITS = SPLITS + EXTRA_SPLITS
MODALITIES = ("image", "audio")


@dataclass
class PairedDataset:
    """Features per modality ([N, C, H, W] float32), labels, and split ids (``ALL_SPLITS`` order)."""

    x: dict[str, np.ndarray]
    y: np.ndarray
    split: np.ndarray
    class_names: list[str]
    frontends: dict[str, AudioFrontend | ImageFrontend]
    meta: dict
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == ALL_SPLITS.index(split))

    def has_split(self, split: str) -> bool:
        return bool(len(self.indices(split)))

    def take(self, modality: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        idx = self.indices(split)
        return self.x[modality][idx], self.y[idx]


def stratified_split(labels: np.ndarray, fractions, rng: np.random.Generator) -> np.ndarray:
    """Split ids (0 train, 1 val, 2 test) drawn per class in the given fractions."""
    split = np.zeros(len(labels), np.int8)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        split[idx[n_train : n_train + n_val]] = 1
        split[idx[n_train + n_val :]] = 2
    return split


def encode_meta(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)


def load_dataset(path: Path) -> PairedDataset:
    """Load a dataset file; standardisation constants come from its training split."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
        meta = json.loads(bytes(z["meta"]).decode())
        raw = {"image": z["image_raw"], "audio": z["audio_raw"]}
        y, split = z["label"].astype(np.int64), z["split"].astype(np.int8)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"dataset file {path} is unreadable or incomplete: {e}") from None
    train = split == 0
    if not train.any():
        raise ValueError(f"dataset file {path} has no training rows")
    x, frontends = {}, {}
    for m in MODALITIES:
        fe = frontend_from_dict(meta["frontends"][m])
        if isinstance(fe, AudioFrontend):
            waves = raw[m].astype(np.float32)
            if raw[m].dtype == np.int16:
                waves /= 32768.0
            logmel = fe.logmel(waves)
            fe = dataclasses.replace(fe, mean=float(logmel[train].mean()), std=float(logmel[train].std() + 1e-8))
            x[m] = ((logmel - fe.mean) / fe.std)[:, None].astype(np.float32)
        else:
            scaled = raw[m].astype(np.float32) / fe.max_value
            fe = dataclasses.replace(fe, mean=float(scaled[train].mean()), std=float(scaled[train].std() + 1e-8))
            x[m] = fe(raw[m])
        frontends[m] = fe
    return PairedDataset(x, y, split, list(meta["class_names"]), frontends, meta, path)
