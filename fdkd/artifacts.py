"""Artifact file names (spelled here and nowhere else), atomic writes and content hashes.

Every stage writes through :func:`atomic_write` (temp file in the same directory, fsync,
rename), so a killed process never leaves a half-written artifact under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# ---- names inside a run directory -------------------------------------------------------
TEACHER = "teacher.{modality}.pt"
STUDENT = "student.pt"
STUDENT_REVERSE = "student.reverse.pt"  # --bidirectional: the student on the teacher's modality
METRICS = "metrics.jsonl"
TRAIN_STATE = "{stage}.train-state.pt"  # a training stage's per-epoch state, deleted when it ends
TENSORBOARD = "tensorboard/{stage}"  # a training stage's TensorBoard event files (a folder)
TEACHER_METRICS = "teacher.{modality}.metrics.jsonl"
DATASET = "{preset}-{digest}"  # a dataset folder inside data.cache_dir (fdkd.pipeline.data.store)
ONNX_FP32 = "student.onnx"
ONNX_FP16 = "student.fp16.onnx"
ONNX_INT8 = "student.int8.{method}.onnx"  # TensorRT-legal Q/DQ (signed, symmetric), one per calibration method
ONNX_INT8_CPU = "student.int8cpu.onnx"  # ONNX Runtime CPU variant (U8S8, reduced range): not for TensorRT
CALIB = "calib.npz"  # the calibration rows' indices, labels and input hashes (fdkd.calibration.dataset)
SENSITIVITY = "sensitivity.json"
ENGINE = "student.{precision}.{gpu}.trt{version}.plan"
BUILD_INFO = "{engine_stem}.build.json"  # sidecar of each engine
TIMING_CACHE = "timing.cache"
MANIFEST = "manifest.json"
VALIDATION = "validation.json"
# the test rows' indices and input hashes, labels, student.pt's logits: engines validated later, no torch
TESTSET = "validation.testset.npz"
REPORT = "report.md"
ANALYSIS = "analysis.json"


def config_sidecar(artifact: Path) -> Path:
    """The resolved config saved next to an artifact: ``teacher.image.pt`` -> ``teacher.image.config.yaml``."""
    return artifact.with_name(artifact.stem + ".config.yaml")


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temp file next to ``path``; on success fsync and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600: a server running as another user (containers) could not read it
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest(obj) -> str:
    """Short content hash of a JSON-able object (build parameters, configs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz that is byte-identical for identical arrays (fixed zip timestamps, sorted keys).

    ``np.savez`` stamps each member with the current time, so two builds of the same data differ.
    """
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line (metrics logs; a torn last line is the worst a crash can do)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
