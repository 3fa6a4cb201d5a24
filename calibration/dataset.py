"""The calibration set: N training samples drawn stratified by class, saved as ``calib.npz``.

Every class of the training split is in the set at least once (``choose_rows``), and the set is
read back in equal batches (``equal_batch``), so any dataset size calibrates.

``calib.npz`` holds one array keyed by the ONNX input name (plus the row indices and labels it
came from); its sha256 goes into the run manifest. ``NpzCalibrationReader`` feeds it to ONNX
Runtime's calibrators batch by batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

log = logging.getLogger(__name__)
MIN_RECOMMENDED = 300


def calibration_size(n: int, n_classes: int, n_train: int) -> int:
    """Rows in the calibration set: ``n``, raised to one per class, capped at the training split."""
    return min(max(n, n_classes), n_train)


def choose_rows(labels: np.ndarray, train_rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``calibration_size(n, ...)`` sorted row indices from ``train_rows``, stratified by class.

    The rule: every class of the training split gets at least one row (so no class's activations
    are missing from the ranges), the rest is shared in proportion to the class sizes by largest
    remainder, never more rows of a class than it has. When ``n`` is smaller than the number of
    classes the set grows to one row per class (``write_calibration_set`` warns); when the
    training split is smaller than ``n`` every training row is used. Unlabelled training rows (label -1,
    ``fdkd.pipeline.data.labels.UNLABELLED``) calibrate too: activation ranges need inputs, not labels, so they
    are one more stratum, like a class.
    """
    rng = np.random.default_rng(seed)
    train_rows = np.asarray(train_rows)
    if len(train_rows) == 0:
        raise ValueError("the training split is empty: no rows to calibrate on")
    classes, counts = np.unique(labels[train_rows], return_counts=True)
    m = calibration_size(n, len(classes), len(train_rows))
    target = counts / counts.sum() * m
    quota = np.clip(np.floor(target), 1, counts).astype(int)
    while quota.sum() > m:  # the floor of one per class overshot: take from the most over-served
        over = np.where(quota > 1, quota - target, -np.inf)
        quota[int(np.argmax(over))] -= 1
    while quota.sum() < m:  # largest remainder first, among classes with rows left
        under = np.where(quota < counts, target - quota, -np.inf)
        quota[int(np.argmax(under))] += 1
    rows = [rng.choice(train_rows[labels[train_rows] == c], size=q, replace=False)
            for c, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(rows))


def write_calibration_set(path: Path, input_name: str, x: np.ndarray, labels: np.ndarray, train_rows: np.ndarray,
                          n: int, seed: int) -> dict:
    """Write ``calib.npz``; returns a summary (rows, per-class counts, unlabelled rows, warnings)."""
    from fdkd.artifacts import save_npz

    rows = choose_rows(labels, train_rows, n, seed)
    warnings = []
    train_classes = np.unique(labels[train_rows])
    train_classes = train_classes[train_classes >= 0]  # -1: the unlabelled rows, a stratum but not a class
    if len(rows) > n:
        warnings.append(f"quantize.calib_samples={n} is fewer than the {len(train_classes)} classes; "
                        f"calibrating on {len(rows)} rows, one per class")
    elif len(rows) < n:
        warnings.append(f"the training split has {len(rows)} rows (< quantize.calib_samples={n}); "
                        "calibrating on all of them")
    if len(rows) < MIN_RECOMMENDED:
        warnings.append(f"calibration set has {len(rows)} samples (< {MIN_RECOMMENDED}); INT8 ranges may be noisy")
    absent = sorted(set(np.unique(labels[labels >= 0]).tolist()) - set(train_classes.tolist()))
    if absent:
        warnings.append(f"class ids {absent} have no training rows and are not in the calibration set")
    for msg in warnings:
        log.warning(msg)
    save_npz(path, {input_name: x[rows].astype(np.float32), "rows": rows.astype(np.int64),
                    "labels": labels[rows].astype(np.int64)})
    classes, counts = np.unique(labels[rows], return_counts=True)
    return {"samples": int(len(rows)),
            "per_class": {int(c): int(k) for c, k in zip(classes, counts, strict=True) if c >= 0},
            "unlabelled": int((labels[rows] < 0).sum()), "warnings": warnings}


def equal_batch(n: int, batch: int) -> int:
    """The largest batch size <= ``batch`` that divides ``n`` rows into equal batches.

    ONNX Runtime's histogram calibrators (entropy, percentile) stack every batch's activations
    with ``np.asarray``, which fails on a shorter last batch ("inhomogeneous shape"); equal
    batches keep every row, each exactly once. A prime ``n`` > ``batch`` gives batches of one.
    """
    if n <= batch:
        return max(n, 1)
    return next(b for b in range(batch, 0, -1) if n % b == 0)


class NpzCalibrationReader(CalibrationDataReader):
    """ONNX Runtime ``CalibrationDataReader`` over ``calib.npz``, in equal batches of at most ``batch`` rows."""

    def __init__(self, path: Path, input_name: str, batch: int = 32) -> None:
        z = np.load(path, allow_pickle=False)
        if input_name not in z.files:
            raise ValueError(f"{path} has no array for ONNX input {input_name!r} (has {sorted(z.files)})")
        self.data = z[input_name]
        if len(self.data) == 0:
            raise ValueError(f"{path} holds no calibration rows")
        self.input_name, self.batch = input_name, equal_batch(len(self.data), batch)
        self._i = 0

    def get_next(self) -> dict | None:
        if self._i >= len(self.data):
            return None
        chunk = self.data[self._i : self._i + self.batch]
        self._i += self.batch
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self._i = 0

    def __len__(self) -> int:
        return len(self.data)
