"""``.npy`` file bytes -> a checked numeric array: the ``array`` kind of data (IMU windows, radar cubes, features).

One reader for the manifest check, the dataset builder and the server's ``/v1/classify``: NumPy's own format
parser with pickles refused (an object array in a ``.npy`` runs code when loaded), real numbers only (bool,
complex, strings and records are refused), every value finite, and the shape checked against the one the
dataset was built with. Every refusal is an :class:`ArrayError` that says what was found and what was wanted.
"""

from __future__ import annotations

import io

import numpy as np


class ArrayError(ValueError):
    """The bytes are not a ``.npy`` array this reader accepts; the message says why."""


NUMERIC_KINDS = "iuf"  # signed, unsigned, float: numpy dtype.kind


def read_npy(data: bytes) -> np.ndarray:
    """``.npy`` bytes -> the array in its own dtype: real numbers, non-empty, finite. Raises :class:`ArrayError`."""
    if not data.startswith(b"\x93NUMPY"):
        raise ArrayError("not a .npy file (no \\x93NUMPY magic): send an array saved with numpy.save")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:  # object arrays need pickles: refused
        raise ArrayError(f"unreadable .npy: {e}") from None
    except Exception as e:  # a truncated payload or a malformed header
        raise ArrayError(f"unreadable .npy: {type(e).__name__}: {e}") from None
    if arr.dtype.kind not in NUMERIC_KINDS:
        raise ArrayError(f"dtype {arr.dtype}; an array must hold real numbers (int, uint or float)")
    if arr.size == 0:
        raise ArrayError(f"empty array (shape {tuple(arr.shape)})")
    if not np.isfinite(arr.astype(np.float32)).all():
        raise ArrayError("array holds NaN or Inf (or values beyond float32's range)")
    return arr


def decode_npy(data: bytes, shape: tuple[int, ...] | None = None, dtype: str | None = None) -> np.ndarray:
    """``.npy`` bytes -> the array as float32; ``shape`` (and ``dtype``, a numpy dtype name) must match when given."""
    arr = read_npy(data)
    if dtype is not None and arr.dtype.name != dtype:
        raise ArrayError(f"dtype {arr.dtype.name}, expected {dtype}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ArrayError(f"shape {tuple(arr.shape)}, expected {tuple(shape)}")
    return arr.astype(np.float32)
