"""Dataset rows' features for a stage that reads them more than once, without holding the dataset.

A stage that passes over the same rows several times (calibration: one pass per calibrator and search attempt;
the INT8 gate search: one validation pass per attempt; validation: one test pass per artifact) reads them from the
dataset ONCE with :func:`gather`: a dense array (a dataset in memory) gives ``x[rows]`` as before; a streamed
column (``fdkd.pipeline.data.rows.StreamRows``: anything that is not an ndarray but answers ``x[row_numbers]``) is
decoded chunk by chunk into a :class:`FeatureSpool`, a flat float32 file in the stage's temporary folder read back
in chunks with plain reads (no memory map: mapped pages would count in the process's resident memory).

Every row read gets its sha256 (:func:`row_sha256`, over the C-order float32 bytes of its features): what the
calibration set and ``validation.testset.npz`` keep instead of a copy of the inputs, and what a later reader
checks the dataset's rows against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHUNK = 256  # rows per read where a stage walks many rows (as fdkd.pipeline.data.rows.CHUNK)
CHUNK_BYTES = 16 << 20  # and a model call's input at most this large (27 rows of 3x224x224: a runtime's activations
#                         for 256 such rows are gigabytes)


def chunk_size(x, size: int = CHUNK) -> int:
    """Rows per model call over ``x``: ``size``, fewer where that many rows would pass ``CHUNK_BYTES``."""
    row_bytes = 4 * int(np.prod(x.shape[1:])) if len(x.shape) > 1 else 4
    return max(1, min(size, CHUNK_BYTES // max(row_bytes, 1)))


def row_sha256(features: np.ndarray) -> np.ndarray:
    """sha256 of each row's float32 features: uint8 ``[len(features), 32]``."""
    a = np.ascontiguousarray(features, dtype=np.float32)
    out = np.empty((len(a), 32), np.uint8)
    for i in range(len(a)):
        out[i] = np.frombuffer(hashlib.sha256(a[i].tobytes()).digest(), np.uint8)
    return out


def hex_digest(digest: np.ndarray) -> str:
    return bytes(np.asarray(digest, np.uint8)).hex()


def is_dense(x) -> bool:
    return isinstance(x, np.ndarray)


def row_chunks(n: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


class FeatureSpool:
    """Rows' float32 features in a flat file, read back in slices: ``spool[lo:hi]`` -> ``[hi - lo, *shape[1:]]``."""

    def __init__(self, path: Path, sample_shape: tuple[int, ...]) -> None:
        self.path, self.sample_shape = Path(path), tuple(int(s) for s in sample_shape)
        self.row_floats = int(np.prod(self.sample_shape))
        self.n = 0
        self._out = self.path.open("wb")

    def append(self, features: np.ndarray) -> None:
        a = np.ascontiguousarray(features, dtype=np.float32)
        if a.shape[1:] != self.sample_shape:
            raise ValueError(f"{self.path.name}: rows of shape {a.shape[1:]}, expected {self.sample_shape}")
        a.tofile(self._out)
        self.n += len(a)

    def close(self) -> None:
        if not self._out.closed:
            self._out.close()

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.sample_shape)

    ndim = property(lambda self: 1 + len(self.sample_shape))
    dtype = np.dtype(np.float32)

    def __getitem__(self, idx) -> np.ndarray:
        self.close()
        if isinstance(idx, slice):
            lo, hi, step = idx.indices(self.n)
            if step == 1:
                count = max(hi - lo, 0)
                flat = np.fromfile(self.path, np.float32, count=count * self.row_floats,
                                   offset=lo * self.row_floats * 4)
                return flat.reshape(count, *self.sample_shape)
            idx = np.arange(lo, hi, step)
        rows = np.asarray(idx, np.int64).reshape(-1)
        out = np.empty((len(rows), *self.sample_shape), np.float32)
        for k, r in enumerate(rows):
            out[k] = self[int(r) : int(r) + 1][0]
        return out


def gather(x, rows: np.ndarray, folder: Path | None,
           name: str = "rows") -> tuple[np.ndarray | FeatureSpool, np.ndarray]:
    """``x[rows]`` read once, and each row's sha256. Dense ``x``: an array in memory (what the stages did before);
    a streamed ``x``: a :class:`FeatureSpool` under ``folder`` filled in chunks of ``CHUNK`` rows."""
    rows = np.asarray(rows, np.int64)
    if is_dense(x):
        feats = np.ascontiguousarray(x[rows], dtype=np.float32)
        return feats, row_sha256(feats)
    if folder is None:
        raise ValueError("a streamed dataset needs a folder to spool its rows' features to")
    spool = FeatureSpool(Path(folder) / f"{name}.f32", tuple(x.shape[1:]))
    digests = np.empty((len(rows), 32), np.uint8)
    try:
        for lo, hi in row_chunks(len(rows)):
            part = np.asarray(x[rows[lo:hi]], np.float32)
            digests[lo:hi] = row_sha256(part)
            spool.append(part)
    finally:
        spool.close()
    return spool, digests


def parts(x, size: int = CHUNK) -> Iterator[tuple[int, int, np.ndarray]]:
    """(lo, hi, ``x[lo:hi]``) over every row of ``x``: one part for a dense array (its old single call), chunks of
    ``size`` rows otherwise (fewer where the rows are large: ``chunk_size``)."""
    if is_dense(x):
        yield 0, len(x), x
        return
    if len(x) == 0:  # one empty call, as a dense array's
        yield 0, 0, np.zeros((0, *x.shape[1:]), np.float32)
        return
    for lo, hi in row_chunks(len(x), chunk_size(x, size)):
        yield lo, hi, np.asarray(x[lo:hi], np.float32)


def apply(fn, x, size: int = CHUNK) -> np.ndarray:
    """``fn`` (features -> per-row outputs, e.g. logits) over every row of ``x`` in :func:`parts`, concatenated."""
    outs = [np.asarray(fn(part)) for _, _, part in parts(x, size)]
    return outs[0] if len(outs) == 1 else np.concatenate(outs)
