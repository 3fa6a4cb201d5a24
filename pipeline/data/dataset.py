"""The in-memory paired dataset every training stage consumes, and its on-disk form.

A dataset file (``.npz``, written by ``fdkd.pipeline.data.avdigits`` or ``fdkd.pipeline.data.manifest``)
holds ``<modality>_raw`` per input (raw pixels, depth levels, waveforms or arrays: one per key of
``meta["frontends"]``), labels, splits and a JSON ``meta`` record. Loading fits the
frontends' standardisation on the training split and computes the features with
``fdkd.serving.preprocess`` (the exact numpy code the server runs).

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

from fdkd.serving.preprocess import AudioFrontend, Frontend, frontend_from_dict

SPLITS = ("train", "val", "test")
EXTRA_SPLITS = ("test_unseen_accent",)  # split id 3 onwards: extra evaluation-only splits
ALL_SPLITS = SPLITS + EXTRA_SPLITS
MODALITIES = ("image", "audio")  # the built-in sources' two inputs; a manifest's are its config's modalities


@dataclass
class PairedDataset:
    """Features per modality ([N, C, H, W] float32), labels, and split ids (``ALL_SPLITS`` order).

    ``y`` are the labels the student trains on: -1 (``fdkd.pipeline.data.labels.UNLABELLED``) on a training pair
    nobody labelled. ``teacher_y`` are the file's labels, the ones a teacher trains on (None: the same as ``y``);
    they differ from ``y`` only on training rows, after ``data.labelled`` or ``data.label_noise``.
    """

    x: dict[str, np.ndarray]
    y: np.ndarray
    split: np.ndarray
    class_names: list[str]
    frontends: dict[str, Frontend]
    meta: dict
    path: Path | None = None
    teacher_y: np.ndarray | None = None
    labels: dict | None = None  # fdkd.pipeline.data.labels.student_labels's summary

    @property
    def teacher_labels(self) -> np.ndarray:
        return self.y if self.teacher_y is None else self.teacher_y

    def label_counts(self) -> dict[str, dict[str, int]]:
        """Per split: rows, labelled and unlabelled (the student's labels)."""
        out = {}
        for name in ALL_SPLITS:
            idx = self.indices(name)
            if len(idx):
                lab = int((self.y[idx] >= 0).sum())
                out[name] = {"rows": len(idx), "labelled": lab, "unlabelled": len(idx) - lab}
        return out

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


_LAST: tuple[tuple, PairedDataset] | None = None  # the most recent load: (file key, dataset)
MEMO_MAX_BYTES = 1 << 30  # features kept in memory up to this size: the copy costs memory for the whole process


def _file_key(path: Path) -> tuple:
    """Identifies one version of a file: rebuilt dataset files are written anew (``artifacts.atomic_write``),
    so a rebuild changes the inode, size or modification time."""
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def _copy(ds: PairedDataset) -> PairedDataset:
    return dataclasses.replace(ds, x={m: a.copy() for m, a in ds.x.items()}, y=ds.y.copy(), split=ds.split.copy(),
                               class_names=list(ds.class_names), frontends=dict(ds.frontends),
                               meta=json.loads(json.dumps(ds.meta)))


def load_dataset(path: Path) -> PairedDataset:
    """Load a dataset file; standardisation constants come from its training split.

    The features of the most recently loaded file (up to ``MEMO_MAX_BYTES`` of them) are kept in memory:
    ``fdkd run`` reads the same file in several stages, and the log-mel of every clip is most of a load's
    cost. Every call returns its own copy of the arrays, so a caller that changes them in place changes
    nothing for the next one.
    """
    global _LAST
    path = Path(path)
    try:
        key = _file_key(path)
    except OSError as e:
        raise ValueError(f"dataset file {path} is unreadable or incomplete: {e}") from None
    if _LAST is not None and _LAST[0] == key:
        return dataclasses.replace(_copy(_LAST[1]), path=path)
    ds = _read(path)
    if sum(a.nbytes for a in ds.x.values()) > MEMO_MAX_BYTES:
        _LAST = None
        return ds
    _LAST = (key, ds)
    return _copy(ds)


def _read(path: Path) -> PairedDataset:
    try:
        z = np.load(path, allow_pickle=False)
        meta = json.loads(bytes(z["meta"]).decode())
        raw = {m: z[f"{m}_raw"] for m in meta["frontends"]}
        y, split = z["label"].astype(np.int64), z["split"].astype(np.int8)
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"dataset file {path} is unreadable or incomplete: {e}") from None
    train = split == 0
    if not train.any():
        raise ValueError(f"dataset file {path} has no training rows")
    x, frontends = {}, {}
    for m in meta["frontends"]:
        fe = frontend_from_dict(meta["frontends"][m])
        if isinstance(fe, AudioFrontend):
            waves = raw[m].astype(np.float32)
            if raw[m].dtype == np.int16:
                waves /= 32768.0
            logmel = fe.logmel(waves)  # once for every row: the training rows' statistics come from the same array
            fe = dataclasses.replace(fe, mean=float(logmel[train].mean()), std=float(logmel[train].std() + 1e-8))
            x[m] = ((logmel - fe.mean) / fe.std)[:, None].astype(np.float32)
        else:  # image (per channel), depth (metres), array (per channel)
            fe = fe.fitted(raw[m][train])
            x[m] = fe(raw[m])
        frontends[m] = fe
    return PairedDataset(x, y, split, list(meta["class_names"]), frontends, meta, path)
