"""Run a stage on the streaming path before the on-disk store exists: ``fdkd.pipeline.data.load`` returns
``rows.streamed(ds)`` (StreamRows over the features), and every decoded row is logged.

In tests: ``use_streamed(monkeypatch, log_dir)``. In a subprocess (torchrun workers, a killed ``fdkd`` process):
``python -m tests.streamed <module> [args...]`` runs ``<module>`` as ``__main__`` with the same patch, logging to
``$FDKD_TEST_READS`` when set. Each process (a DataLoader worker too) appends ``rank modality row epoch`` lines to
its own file ``reads.<rank>.<pid>.txt``: ``epoch`` is the training view's epoch (its crop generator is seeded by
(seed, epoch, row)), ``-`` for a read without a crop (evaluation, the teacher's input).
"""

from __future__ import annotations

import dataclasses
import os
import runpy
import sys
from pathlib import Path

import numpy as np

from fdkd.pipeline.data.rows import ArraySource, StreamRows, _features_as_is

READS_ENV = "FDKD_TEST_READS"


class LoggingSource(ArraySource):
    """An ``ArraySource`` that appends every row it decodes to a per-process file under ``folder``."""

    def __init__(self, arrays: dict[str, np.ndarray], folder: Path | None) -> None:
        super().__init__(arrays)
        self.folder = None if folder is None else Path(folder)

    def raw(self, row: int, modality: str, rng: np.random.Generator | None = None) -> np.ndarray:
        if self.folder is not None:
            epoch = "-" if rng is None else str(rng.bit_generator.seed_seq.entropy[1])
            rank = os.environ.get("RANK", "0")
            with open(self.folder / f"reads.{rank}.{os.getpid()}.txt", "a") as f:
                f.write(f"{rank} {modality} {row} {epoch}\n")
        return super().raw(row, modality, rng)


def streamed_over(ds, folder: Path | None = None):
    """``ds`` with every column a ``StreamRows`` over a ``LoggingSource`` of its features."""
    source = LoggingSource(dict(ds.x), folder)
    x = {m: StreamRows(source, m, _features_as_is, a.shape[1:]) for m, a in ds.x.items()}
    return dataclasses.replace(ds, x=x)


def patch_load(setattr_, folder: Path | None = None) -> None:
    """Make ``fdkd.pipeline.data.load`` return the streamed dataset (``setattr_``: ``monkeypatch.setattr`` or
    ``setattr``)."""
    from fdkd.pipeline import data

    real = data.load

    def load(cfg, progress=None):
        return streamed_over(real(cfg, progress), folder)

    setattr_(data, "load", load)


def use_streamed(monkeypatch, folder: Path | None = None) -> None:
    patch_load(monkeypatch.setattr, folder)


def read_log(folder: Path) -> list[tuple[int, str, int, int | None]]:
    """Every logged read: (rank, modality, row, epoch or None)."""
    out = []
    for path in sorted(Path(folder).glob("reads.*.txt")):
        for line in path.read_text().splitlines():
            rank, modality, row, epoch = line.split()
            out.append((int(rank), modality, int(row), None if epoch == "-" else int(epoch)))
    return out


def main() -> None:
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    folder = os.environ.get(READS_ENV)
    patch_load(setattr, Path(folder) if folder else None)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
