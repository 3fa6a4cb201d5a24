"""The calibration set: N training samples drawn stratified by class, saved as ``calib.npz``.

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


def choose_rows(labels: np.ndarray, train_rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` row indices from ``train_rows``, stratified by class (proportional, at least one each)."""
    rng = np.random.default_rng(seed)
    n = min(n, len(train_rows))
    classes, counts = np.unique(labels[train_rows], return_counts=True)
    exact = counts / counts.sum() * n
    quota = np.maximum(1, np.floor(exact)).astype(int)
    for c in np.argsort(-(exact - np.floor(exact)), kind="stable"):  # largest remainders first
        if quota.sum() >= n:
            break
        quota[c] += 1
    rows = [rng.choice(train_rows[labels[train_rows] == c], size=min(q, cnt), replace=False)
            for c, q, cnt in zip(classes, quota, counts, strict=True)]
    return np.sort(np.concatenate(rows))[:n]


def write_calibration_set(path: Path, input_name: str, x: np.ndarray, labels: np.ndarray, train_rows: np.ndarray,
                          n: int, seed: int) -> dict:
    """Write ``calib.npz``; returns a summary (rows, per-class counts, warnings)."""
    from pipeline.artifacts import save_npz

    rows = choose_rows(labels, train_rows, n, seed)
    warnings = []
    if len(rows) < MIN_RECOMMENDED:
        msg = f"calibration set has {len(rows)} samples (< {MIN_RECOMMENDED}); INT8 ranges may be noisy"
        log.warning(msg)
        warnings.append(msg)
    save_npz(path, {input_name: x[rows].astype(np.float32), "rows": rows.astype(np.int64),
                    "labels": labels[rows].astype(np.int64)})
    classes, counts = np.unique(labels[rows], return_counts=True)
    return {"samples": int(len(rows)), "per_class": {int(c): int(k) for c, k in zip(classes, counts, strict=True)},
            "warnings": warnings}


class NpzCalibrationReader(CalibrationDataReader):
    """ONNX Runtime ``CalibrationDataReader`` over ``calib.npz``, ``batch`` rows at a time."""

    def __init__(self, path: Path, input_name: str, batch: int = 32) -> None:
        z = np.load(path, allow_pickle=False)
        if input_name not in z.files:
            raise ValueError(f"{path} has no array for ONNX input {input_name!r} (has {sorted(z.files)})")
        self.data = z[input_name]
        self.input_name, self.batch = input_name, batch
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
