"""The calibration set: N training rows drawn stratified by class, saved as ``calib.npz`` (row indices, not inputs).

Every class of the training split is in the set at least once (``choose_rows``), and the set is
read back in equal batches (``equal_batch``), so any dataset size calibrates.

``calib.npz`` holds the chosen row indices, their labels and each row's input hash (``sha256``: the sha256 of the
row's float32 features, ``fdkd.row_features.row_sha256``), never a copy of the inputs; its sha256 goes into the
run manifest. A stage that calibrates opens it with the dataset's column as :class:`CalibrationRows`, which reads
those rows from the dataset ONCE (a dataset in memory: an array; a streamed one: a spool file in the stage's
temporary folder), refuses a row whose features no longer hash as recorded (naming it), and hands ONNX Runtime's
calibrators a :class:`RowsCalibrationReader` over them, in equal batches. A ``calib.npz`` of an older fdkd that
holds the inputs themselves (keyed by the ONNX input name) still opens (``NpzCalibrationReader``).
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


def write_calibration_set(path: Path, input_name: str, x, labels: np.ndarray, train_rows: np.ndarray,
                          n: int, seed: int) -> dict:
    """Write ``calib.npz`` (rows, labels, per-row input hashes); returns a summary (rows, per-class counts,
    unlabelled rows, warnings). ``x`` is the student's column: a dense array or a streamed one (its rows are read in
    chunks to hash them, nothing kept)."""
    from fdkd.artifacts import save_npz
    from fdkd.row_features import row_chunks, row_sha256

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
    digests = np.empty((len(rows), 32), np.uint8)
    for lo, hi in row_chunks(len(rows)):
        digests[lo:hi] = row_sha256(np.asarray(x[rows[lo:hi]], np.float32))
    save_npz(path, {"rows": rows.astype(np.int64), "labels": labels[rows].astype(np.int64), "sha256": digests,
                    "input_shape": np.asarray(x.shape[1:], np.int64)})
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


class RowsCalibrationReader(CalibrationDataReader):
    """ONNX Runtime ``CalibrationDataReader`` over rows' features (an array or a ``FeatureSpool``), in equal batches
    of at most ``batch`` rows. Its length and ``set_range`` count batches: ONNX Runtime's ``CalibStridedMinMax``
    walks the reader a stride of batches at a time (``fdkd.calibration.quantize``)."""

    def __init__(self, features, input_name: str, batch: int = 32) -> None:
        if len(features) == 0:
            raise ValueError("the calibration set holds no rows")
        self.features, self.input_name = features, input_name
        self.batch = equal_batch(len(features), batch)
        self.n_batches = len(features) // self.batch
        self._i, self._end = 0, self.n_batches

    def get_next(self) -> dict | None:
        if self._i >= self._end:
            return None
        lo = self._i * self.batch
        self._i += 1
        return {self.input_name: np.ascontiguousarray(self.features[lo : lo + self.batch], dtype=np.float32)}

    def rewind(self) -> None:
        self._i, self._end = 0, self.n_batches

    def set_range(self, start_index: int, end_index: int) -> None:
        self._i, self._end = start_index, min(end_index, self.n_batches)

    def __len__(self) -> int:
        return self.n_batches


class NpzCalibrationReader(RowsCalibrationReader):
    """A ``calib.npz`` that holds the inputs themselves, keyed by the ONNX input name (an older fdkd's, or one
    written by hand), read in equal batches of at most ``batch`` rows."""

    def __init__(self, path: Path, input_name: str, batch: int = 32) -> None:
        z = np.load(path, allow_pickle=False)
        if input_name not in z.files:
            hint = (": it names dataset rows (sha256); open it with CalibrationRows and the dataset"
                    if "sha256" in z.files else "")
            raise ValueError(f"{path} has no array for ONNX input {input_name!r} (has {sorted(z.files)}){hint}")
        data = z[input_name]
        if len(data) == 0:
            raise ValueError(f"{path} holds no calibration rows")
        super().__init__(data, input_name, batch)


class CalibrationRows:
    """The calibration set's features for one stage: ``calib.npz``'s rows read from the dataset's column ``x`` once,
    each checked against its recorded hash. ``folder``: where a streamed column's rows are spooled (the stage's
    temporary folder; unused for a dense column). ``reader()`` gives a fresh ONNX Runtime reader over them."""

    def __init__(self, path: Path, input_name: str, x=None, folder: Path | None = None) -> None:
        from fdkd.row_features import gather, hex_digest

        self.path, self.input_name = Path(path), input_name
        z = np.load(self.path, allow_pickle=False)
        if input_name in z.files:  # an older calib.npz holding the inputs: nothing to read from the dataset
            self.rows, self.features = z["rows"] if "rows" in z.files else None, z[input_name]
            return
        if "sha256" not in z.files or "rows" not in z.files:
            raise ValueError(f"{self.path} is not a calibration set (no rows/sha256; has {sorted(z.files)})")
        if x is None:
            raise ValueError(f"{self.path} names dataset rows: calibrating needs the dataset's "
                             f"{input_name!r} column to read them from")
        self.rows, expected = z["rows"].astype(np.int64), z["sha256"]
        if len(self.rows) == 0:
            raise ValueError(f"{self.path} holds no calibration rows")
        if self.rows.max() >= len(x) or self.rows.min() < 0:
            raise ValueError(f"{self.path} names row {int(self.rows.max())} but the dataset has {len(x)} rows: "
                             "it was drawn from another dataset (redo `fdkd calibrate`)")
        if "input_shape" in z.files and tuple(z["input_shape"].tolist()) != tuple(x.shape[1:]):
            raise ValueError(f"{self.path} was drawn from inputs of shape {tuple(z['input_shape'].tolist())}; the "
                             f"dataset's are {tuple(x.shape[1:])} (redo `fdkd calibrate`)")
        self.features, got = gather(x, self.rows, folder, "calib")
        bad = np.flatnonzero((got != expected).any(axis=1))
        if len(bad):
            k = int(bad[0])
            raise ValueError(f"{self.path}: dataset row {int(self.rows[k])} does not hash as it did when the set was "
                             f"drawn (sha256 {hex_digest(got[k])[:16]}..., recorded {hex_digest(expected[k])[:16]}...;"
                             f" {len(bad)} of {len(self.rows)} rows differ): the dataset changed since `fdkd "
                             "calibrate` (redo it)")

    def __len__(self) -> int:
        return len(self.features)

    def reader(self, batch: int = 32) -> RowsCalibrationReader:
        return RowsCalibrationReader(self.features, self.input_name, batch)


def open_calibration(calib, input_name: str) -> CalibrationRows:
    """``calib`` as :class:`CalibrationRows`: itself (anything with ``reader(batch)``), or a ``calib.npz`` path that
    holds its inputs."""
    return calib if hasattr(calib, "reader") else CalibrationRows(Path(calib), input_name)
