"""A dataset column's features, row by row, without holding the dataset: what every stage indexes.

A stage reads a modality's features as ``ds.x[modality]``: either a dense float32 array (a dataset that fits
in memory) or a :class:`StreamRows`, which decodes the rows asked for from the on-disk dataset
(``fdkd.pipeline.data.store``) and runs the column's frontend (the numpy code the server runs) on them.
Both answer ``x[rows]`` with a float32 array ``[len(rows), *x.shape[1:]]`` and have ``len``/``shape``;
code that touches many rows walks them in bounded chunks (``chunks``) or prefetches a known order of
batches in DataLoader workers (``StreamRows.batches``).

A :class:`RowSource` is where raw samples come from: ``raw(row, modality, rng)`` is one row's decoded raw sample
(``fdkd.pipeline.data.kinds.decode``'s array); ``rng`` is None for evaluation (an audio clip's centre) or a
``numpy.random.Generator`` for training (a random crop where a clip is longer than ``clip_seconds``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

CHUNK = 256  # rows per chunk where a stage walks many rows: bounded memory, numpy still vectorised
# raw samples decoded before the frontend runs on them: a batch is decoded in groups this large, so what a batch
# costs beyond its output does not grow with its row count (340 rows of 3 s clips took ~500 MB in one go)
DECODE_BYTES = 8 << 20


class RowSource(Protocol):
    """Raw samples by row (``fdkd.pipeline.data.store.Store`` implements it)."""

    def __len__(self) -> int: ...

    def raw(self, row: int, modality: str, rng: np.random.Generator | None = None) -> np.ndarray: ...


def _as_rows(idx, n: int) -> np.ndarray:
    """int, slice, numpy or torch index -> int64 row numbers in [0, n)."""
    if isinstance(idx, slice):
        return np.arange(n, dtype=np.int64)[idx]
    if hasattr(idx, "numpy"):  # a torch tensor: no torch import on this path
        idx = idx.detach().cpu().numpy()
    rows = np.asarray(idx)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise IndexError(f"boolean index of shape {rows.shape} for {n} rows")
        return np.flatnonzero(rows)
    rows = rows.astype(np.int64, copy=False).reshape(-1) if rows.ndim else rows.astype(np.int64).reshape(1)
    if len(rows) and (rows.min() < -n or rows.max() >= n):
        raise IndexError(f"row index out of range for {n} rows")
    return np.where(rows < 0, rows + n, rows)


class StreamRows:
    """One modality's standardised features, decoded on demand: ``x[rows]`` -> float32 ``[k, *shape[1:]]``.

    ``index`` maps this view's rows to the source's (a subset or a permutation: ``view``); ``crop_seed`` set (a
    training view: ``training``) gives each (epoch, row) its own seeded generator, so a row's random crop is the
    same whichever worker decodes it and whatever order rows come in.
    """

    def __init__(self, source: RowSource, modality: str, frontend, sample_shape: tuple[int, ...],
                 index: np.ndarray | None = None, crop_seed: int | None = None, epoch: int = 0) -> None:
        self.source, self.modality, self.frontend = source, modality, frontend
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.index = None if index is None else np.asarray(index, np.int64)
        self.crop_seed, self.epoch = crop_seed, epoch

    def __len__(self) -> int:
        return len(self.source) if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    dtype = np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        """What the features would take in memory, dense."""
        return int(np.prod(self.shape)) * 4

    def _source_rows(self, idx) -> np.ndarray:
        rows = _as_rows(idx, len(self))
        return rows if self.index is None else self.index[rows]

    def __getitem__(self, idx) -> np.ndarray:
        rows = self._source_rows(idx)
        out = np.empty((len(rows), *self.sample_shape), np.float32)
        lo, raws, held = 0, [], 0
        for i, r in enumerate(rows):  # groups of at most DECODE_BYTES of raw samples through the frontend
            raws.append(self.source.raw(int(r), self.modality, self._rng(int(r))))
            held += raws[-1].nbytes
            if held >= DECODE_BYTES or i == len(rows) - 1:
                out[lo : i + 1] = self.frontend(np.stack(raws))  # frontends work row by row: same numbers
                lo, raws, held = i + 1, [], 0
        return out

    def _rng(self, row: int) -> np.random.Generator | None:
        if self.crop_seed is None:
            return None
        return np.random.default_rng((self.crop_seed, self.epoch, row))

    def view(self, idx) -> StreamRows:
        """These rows only, in this order (``x.view(perm)[i]`` is ``x[perm[i]]``)."""
        return StreamRows(self.source, self.modality, self.frontend, self.sample_shape, self._source_rows(idx),
                          self.crop_seed, self.epoch)

    def training(self, seed: int, epoch: int) -> StreamRows:
        """The same rows with training's random crops, seeded by (``seed``, ``epoch``, row)."""
        return StreamRows(self.source, self.modality, self.frontend, self.sample_shape, self.index, seed, epoch)

    def batches(self, batches: Sequence, workers: int = 0) -> Iterator[np.ndarray]:
        """``self[b]`` for each index batch ``b``, in order, decoded ahead by ``workers`` DataLoader processes
        (0: in this process). Each worker decodes whole batches, so the frontend stays vectorised."""
        if workers <= 0 or len(batches) < 2:
            for b in batches:
                yield self[b]
            return
        import torch

        release_free_heap()  # forked workers share this process's pages: not the heap a data build left freed
        loader = torch.utils.data.DataLoader(_Batches(self, [_as_rows(b, len(self)) for b in batches]),
                                             batch_size=None, shuffle=False, num_workers=workers,
                                             prefetch_factor=2, collate_fn=_identity, worker_init_fn=_one_thread)
        for batch in loader:
            yield batch.numpy()

    def materialize(self) -> np.ndarray:
        """Every row, dense (a dataset that fits in memory), decoded chunk by chunk."""
        out = np.empty(self.shape, np.float32)
        for lo, hi in chunk_bounds(len(self)):
            out[lo:hi] = self[lo:hi]
        return out


def release_free_heap() -> bool:
    """Collect garbage and hand the heap's free pages back to the OS (glibc's ``malloc_trim``), before forking
    DataLoader workers. glibc keeps freed heap memory resident: a process that built the dataset (``fdkd run``)
    keeps the build's freed heap, every forked worker maps it (it counts in the tree's memory, and a page a worker
    touches is copied). False where there is no glibc (macOS, musl): nothing to do."""
    import gc

    gc.collect()
    from fdkd.pipeline.numerics import glibc

    libc = glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _identity(x):
    return x


def _one_thread(_worker: int) -> None:
    """A DataLoader worker computes with one thread (torch's default there) in numpy's BLAS too: ``workers``
    processes each spawning a BLAS pool per core would oversubscribe the CPUs the training needs."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it BLAS keeps its own count
        return
    threadpool_limits(1)


class _Batches:
    """Map-style dataset whose item k is batch k (DataLoader workers each decode whole batches)."""

    def __init__(self, rows: StreamRows, batches: list[np.ndarray]) -> None:
        self.rows, self.list = rows, batches

    def __len__(self) -> int:
        return len(self.list)

    def __getitem__(self, k: int):
        import torch

        # a tensor crosses to the main process in shared memory; a numpy batch (38 MB for 64 RGB images at 224x224)
        # would be pickled through a pipe
        return torch.from_numpy(self.rows[self.list[k]])


def chunk_bounds(n: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def chunks(x, rows=None, size: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row numbers, ``x[those rows]``) in chunks of ``size``, for a dense array or a :class:`StreamRows`;
    ``rows`` None walks every row."""
    rows = np.arange(len(x), dtype=np.int64) if rows is None else _as_rows(rows, len(x))
    for lo, hi in chunk_bounds(len(rows), size):
        part = rows[lo:hi]
        yield part, np.asarray(x[part], np.float32)


def is_streamed(x) -> bool:
    return isinstance(x, StreamRows)


class ArraySource:
    """A :class:`RowSource` over arrays already in memory (``{modality: [N, ...]}``): tests and small cases that
    want the streaming path without a store on disk. It counts the rows each modality was asked for (``reads``)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.reads: dict[str, int] = {m: 0 for m in arrays}

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def raw(self, row: int, modality: str, rng: np.random.Generator | None = None) -> np.ndarray:
        self.reads[modality] += 1
        return self.arrays[modality][row]


def _features_as_is(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32)


def streamed(ds):
    """A copy of an in-memory ``PairedDataset`` whose ``x`` are :class:`StreamRows` over its features (the
    identity frontend): every stage must give the same numbers on it as on ``ds``."""
    import dataclasses

    source = ArraySource(dict(ds.x))
    x = {m: StreamRows(source, m, _features_as_is, a.shape[1:]) for m, a in ds.x.items()}
    return dataclasses.replace(ds, x=x)
