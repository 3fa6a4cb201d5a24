"""The paired dataset every training stage consumes, dense in memory or streamed from disk.

A dataset on disk (written by ``fdkd.pipeline.data.avdigits``, ``avblend`` or ``manifest`` through
``fdkd.pipeline.data.store``) is a folder of WebDataset tar shards holding each row's source files, an index and a
``dataset.json`` record with the frontends fitted on the training split. ``load_dataset`` gives its features
(``fdkd.serving.preprocess``: the exact numpy code the server runs) as dense float32 arrays when they fit
``data.memory_mb``, else as ``fdkd.pipeline.data.rows.StreamRows`` that decode rows when indexed.

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

from fdkd.serving.preprocess import Frontend

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


_LAST: tuple[tuple, PairedDataset] | None = None  # the most recent dense load: (record key, dataset)
MEMO_MAX_BYTES = 1 << 30  # features kept in memory up to this size: the copy costs memory for the whole process
MEMORY_MB = 1024  # data.memory_mb's default: dense features up to this size load into memory, larger ones stream


def _file_key(path) -> tuple:
    """Identifies one build of a dataset: a rebuild writes its ``dataset.json`` anew (a new inode, size or
    modification time)."""
    path = Path(path)
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def _copy(ds: PairedDataset) -> PairedDataset:
    return dataclasses.replace(ds, x={m: a.copy() for m, a in ds.x.items()}, y=ds.y.copy(), split=ds.split.copy(),
                               class_names=list(ds.class_names), frontends=dict(ds.frontends),
                               meta=json.loads(json.dumps(ds.meta)))


def dense_bytes(store) -> int:
    """What every column's features take in memory as float32."""
    return sum(len(store) * int(np.prod(store.feature_shape(m))) * 4 for m in store.columns)


def load_dataset(path, in_memory: bool | str = "auto", memory_mb: float = MEMORY_MB) -> PairedDataset:
    """Open a dataset (its directory or its ``dataset.json``; ``fdkd.pipeline.data.store``).

    ``in_memory``: True decodes every row into one dense float32 array per modality (chunk by chunk, into arrays
    allocated once); False gives :class:`~fdkd.pipeline.data.rows.StreamRows` that decode rows when indexed;
    "auto" (``data.in_memory``'s default) is dense when the features fit ``memory_mb`` (``data.memory_mb``).
    The frontends were fitted on the training split when the dataset was built. Opening a streamed dataset bounds
    this process's heap for the rest of its life (``fdkd.pipeline.numerics.bound_heap``; forked DataLoader workers
    inherit it).

    The dense features of the most recently loaded dataset (up to ``MEMO_MAX_BYTES``) are kept in memory: ``fdkd
    run`` reads the same dataset in several stages, and the log-mel of every clip is most of a load's cost. Every
    call returns its own copy of the arrays, so a caller that changes them in place changes nothing for the next.
    """
    from fdkd.pipeline.data.store import Store, record_path

    global _LAST
    if in_memory not in (True, False, "auto"):
        raise ValueError(f"data.in_memory must be auto, true or false, got {in_memory!r}")
    record = record_path(path)
    local = "://" not in str(record)
    try:
        key = _file_key(record) if local else None
    except OSError:
        raise ValueError(f"dataset {path}: no {Path(str(record)).name} (not a dataset, or a build that did not "
                         "finish; build it again)") from None
    store = Store(path)  # a StoreError (a ValueError) names a missing or truncated shard
    dense = in_memory is True or (in_memory == "auto" and dense_bytes(store) <= memory_mb * 2**20)
    if not dense:
        from fdkd.pipeline.numerics import bound_heap

        bound_heap()  # a stage walking a streamed split chunk by chunk: its memory must not grow with the chunks
        return _streamed(store, record)
    if key is not None and _LAST is not None and _LAST[0] == key:
        store.close()
        return dataclasses.replace(_copy(_LAST[1]), path=Path(record))
    ds = _dense(store, record)
    if key is None or sum(a.nbytes for a in ds.x.values()) > MEMO_MAX_BYTES:
        return ds
    _LAST = (key, ds)
    return _copy(ds)


def remember(record, features: dict[str, np.ndarray]) -> None:
    """Keep ``features`` (every row's, as a dense load computes them) as the memo of the dataset at ``record``: a
    build that computed them (``StoreWriter(keep_features=True)``) spares the same process's first load."""
    from fdkd.pipeline.data.store import Store

    global _LAST
    if sum(a.nbytes for a in features.values()) > MEMO_MAX_BYTES:
        return
    _LAST = (_file_key(record), _paired(Store(record), record, features))


def _streamed(store, record) -> PairedDataset:
    from fdkd.pipeline.data.rows import StreamRows

    x = {m: StreamRows(store, m, store.frontends[m], store.feature_shape(m)) for m in store.columns}
    return _paired(store, record, x)


def _dense(store, record) -> PairedDataset:
    from fdkd.pipeline.data.rows import CHUNK, chunk_bounds

    x = {}
    for m in store.columns:
        fe = store.frontends[m]
        out = np.empty((len(store), *store.feature_shape(m)), np.float32)
        for lo, hi in chunk_bounds(len(store), CHUNK):
            out[lo:hi] = fe(np.stack([store.raw(r, m) for r in range(lo, hi)]))
        x[m] = out
    store.close()
    return _paired(store, record, x)


def _paired(store, record, x: dict) -> PairedDataset:
    split = store.split
    if not (split == 0).any():
        raise ValueError(f"dataset {store.dir} has no training rows")
    return PairedDataset(x, store.labels, split, list(store.meta["class_names"]), dict(store.frontends),
                         store.meta, Path(record) if "://" not in str(record) else None)


def row_arrays(path) -> dict[str, np.ndarray]:
    """A dataset's per-row arrays without its samples: label, split, key, and the builder's own (voice, accent,
    image_index, ...; ``index.npz``)."""
    from fdkd.pipeline.data.store import Store

    return dict(Store(path).index)


def raw_column(path, modality: str) -> np.ndarray:
    """Every row's raw sample of one column, stacked (tests and small tools: it holds the column in memory)."""
    from fdkd.pipeline.data.store import Store

    store = Store(path)
    return np.stack([store.raw(r, modality) for r in range(len(store))])
