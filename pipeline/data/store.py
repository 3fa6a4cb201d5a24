"""The on-disk dataset every stage streams from: WebDataset tar shards of the source files' bytes, an index, a record.

A dataset is a directory ``<cache_dir>/<name>-<hash>/`` holding

- ``shards/shard-000000.tar`` ...: POSIX ustar archives with deterministic headers (mtime 0, uid/gid 0, empty
  owner names, mode 0644), rows in order; per row the members ``<key>.<modality>.<ext>`` (the source file's bytes
  as they are: JPEG stays JPEG, WAV stays WAV; built-in data encoded losslessly as PNG, 16-bit WAV or ``.npy``)
  and ``<key>.cls`` (the label as text). That is the WebDataset layout: DALI, timm and Hugging Face read it.
- ``index.npz``: per row its key, label, split, shard number and, per modality, the member's byte offset and size
  inside its shard (``offset_<modality>``, ``size_<modality>``): indexed random access, so an epoch is any seeded
  permutation of rows and a rank or DataLoader worker reads only the rows it is given. A builder's extra per-row
  arrays (voice, accent, source image ...) live here too (``Store.index``).
- ``dataset.json``, written LAST: format name and version, ``meta`` (class names, the builder's record), the columns
  (each one's :class:`~fdkd.pipeline.data.kinds.ColumnSpec`, member extension and its frontend, fitted on the
  training split while building), the row count and every shard's size and sha256 (so the file's own sha256, the
  run manifest's ``dataset`` artifact, covers every byte of the data).

A build writes into ``<dir>.partial-<pid>`` and renames it into place only when complete (``StoreWriter``); a reader
requires ``dataset.json``, so a killed build leaves only a ``.partial-*`` folder nothing reads (the next build of
the cache removes stale ones). The same rows give byte-identical shards, index and record.

Frontend statistics are fitted during the build, streaming: per channel, chunk means and sums of squared deviations
merged in float64 (Chan et al.) over every training row's pre-standardisation features, never holding the rows.

:class:`Store` opens a dataset (a local path, or an fsspec URL such as ``s3://``, ``gs://`` or ``memory://`` when
fsspec is installed), checks every shard is there at its recorded size, and reads a row's member bytes
(``read``) or its decoded raw sample (``raw``, with the audio crop policy of ``fdkd.pipeline.data.kinds``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fdkd import artifacts
from fdkd.pipeline.data.kinds import ColumnSpec, decode, spec_from_dict, spec_to_dict
from fdkd.serving.preprocess import (
    ArrayFrontend,
    AudioFrontend,
    DepthFrontend,
    Frontend,
    ImageFrontend,
    frontend_from_dict,
)

FORMAT = "fdkd-webdataset"
VERSION = 1
RECORD = "dataset.json"
INDEX = "index.npz"
SHARDS = "shards"
SHARD = "shard-{:06d}.tar"
SHARD_BYTES = 64 << 20  # a shard is closed once it holds this much: many shards for real data, one for tiny sets
STATS_CHUNK = 256  # training rows whose features are computed at once for the statistics


class StoreError(ValueError):
    """A dataset on disk that cannot be read as recorded: names the dataset, shard, row or member at fault."""


class BadSample(ValueError):
    """A row's file that does not decode (``row``: its position, ``modality``, ``name``: the member or source file);
    raised by the writer before anything of the build is kept."""

    def __init__(self, row: int, key: str, modality: str, name: str, message: str) -> None:
        self.row, self.key, self.modality, self.name, self.message = row, key, modality, name, message
        super().__init__(f"row {row} (key {key}), {modality} file {name}: {message}")


@dataclass(frozen=True)
class Column:
    """One input of a dataset: how its bytes decode (``spec``), the member extension and its (unfitted) frontend."""

    spec: ColumnSpec
    ext: str
    frontend: Frontend


def dataset_dir(path) -> Path | str:
    """The dataset directory of ``path`` (the directory, or its ``dataset.json``)."""
    s = str(path)
    if s.endswith("/" + RECORD) or s == RECORD:
        return Path(path).parent if "://" not in s else s[: -len(RECORD) - 1]
    return Path(path) if "://" not in s else s.rstrip("/")


def record_path(path) -> Path | str:
    """The ``dataset.json`` of a dataset directory (or that file itself)."""
    d = dataset_dir(path)
    return d / RECORD if isinstance(d, Path) else f"{d}/{RECORD}"


def exists(path) -> bool:
    """A complete dataset is there (its record is written last)."""
    return Path(record_path(path)).is_file()


# ------------------------------------------------------------------------------------------------ statistics
def _pre_features(fe: Frontend, raw: np.ndarray) -> np.ndarray:
    """What a frontend standardises, [N, C, ...] float32: its ``fitted`` measures these (serving.preprocess)."""
    if isinstance(fe, AudioFrontend):
        return fe.logmel(raw)[:, None]
    if isinstance(fe, ImageFrontend):
        return np.asarray(raw, np.float32) / fe.max_value
    if isinstance(fe, DepthFrontend):
        return fe.metres(raw)
    if isinstance(fe, ArrayFrontend):
        return fe._as_features(raw)
    raise TypeError(f"no statistics for frontend {type(fe).__name__}")


def standardise(fe: Frontend, pre: np.ndarray) -> np.ndarray:
    """``fe``'s features from its pre-standardisation ones (``_pre_features``): the arithmetic of ``fe(raw)``, step
    for step, so the result is bit-identical to it (tests/test_store.py checks each kind)."""
    from fdkd.serving.preprocess import _per_channel

    if isinstance(fe, AudioFrontend):
        return ((pre[:, 0] - fe.mean) / fe.std)[:, None].astype(np.float32)
    if isinstance(fe, DepthFrontend):
        return ((pre - np.float32(fe.mean)) / np.float32(fe.std)).astype(np.float32)
    c = pre.shape[1]
    return ((pre - _per_channel(fe.mean, c)) / _per_channel(fe.std, c)).astype(np.float32)


class RunningStats:
    """Per-channel mean and standard deviation over [N, C, ...] chunks, merged in float64 (Chan et al.'s update of
    count, mean and sum of squared deviations): the same numbers as one pass over every row, holding none."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        c = x.shape[1]
        flat = np.moveaxis(np.asarray(x), 1, 0).reshape(c, -1).astype(np.float64)
        n_b = flat.shape[1]
        if n_b == 0:
            return
        mean_b = flat.mean(axis=1)
        m2_b = ((flat - mean_b[:, None]) ** 2).sum(axis=1)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n

    def result(self) -> tuple:
        """(mean, std) as ``serving.preprocess._channel_stats`` gives them: floats for one channel, tuples else."""
        if self.mean is None:
            raise ValueError("no training rows to fit the frontend's statistics on")
        std = np.sqrt(self.m2 / self.n) + 1e-8
        if len(self.mean) == 1:
            return float(self.mean[0]), float(std[0])
        return tuple(float(v) for v in self.mean), tuple(float(v) for v in std)


def fit(fe: Frontend, stats: RunningStats) -> Frontend:
    import dataclasses

    mean, std = stats.result()
    return dataclasses.replace(fe, mean=mean, std=std)


# ------------------------------------------------------------------------------------------------ writing
def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
    return info


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte POSIX ustar header ``tarfile`` writes for a regular file of ``size`` bytes with mtime 0, uid/gid
    0, empty owner names and mode 0644, byte for byte (tests/test_store.py compares), at a tenth of its cost: a
    dataset has three members a row. Names over 100 bytes take ``tarfile``'s prefix split."""
    raw = name.encode()
    if size >= 8**11:
        raise ValueError(f"{name}: {size} bytes, over ustar's 8 GiB member limit")
    if len(raw) > 100:
        return _tarinfo(name, size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    h = bytearray(512)
    h[0 : len(raw)] = raw
    h[100:124] = b"0000644\x000000000\x000000000\x00"  # mode, uid, gid
    h[124:148] = b"%011o\x00" % size + b"00000000000\x00"  # size, mtime
    h[148:157] = b"        0"  # checksum field as spaces while summing, type regular file
    h[257:265] = tarfile.POSIX_MAGIC
    h[148:155] = b"%06o\x00" % sum(h)
    return bytes(h)


class _Shard:
    """One tar file being written: members appended in order (``ustar_header``), closed as ``tarfile`` closes one
    (two zero blocks, padded to a whole 10 KiB record)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 (open across add calls; closed by close)
        self.offset = 0

    def add(self, name: str, data: bytes) -> int:
        """Append a member; its data's byte offset in the shard."""
        header = ustar_header(name, len(data))
        pad = -len(data) % tarfile.BLOCKSIZE
        self.file.write(header)
        self.file.write(data)
        self.file.write(b"\0" * pad)
        start = self.offset + len(header)
        self.offset = start + len(data) + pad
        return start

    def close(self) -> None:
        end = self.offset + 2 * tarfile.BLOCKSIZE
        self.file.write(b"\0" * (2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))
        self.file.close()


def remove_partials(final: Path) -> None:
    """Remove what killed builds of ``final`` left (``<final>.partial-<pid>``; a live build's pid is spared)."""
    for p in final.parent.glob(final.name + ".partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreWriter:
    """Writes a dataset row by row into ``<final>.partial-<pid>``; ``close()`` fits the frontends, writes the index
    and the record last, and renames the folder into place. Used as a context manager, an exception (a bad file, a
    kill) removes the partial folder and leaves any dataset already at ``final`` as it was.

    ``add`` decodes every member once (a file that does not decode is a :class:`BadSample` naming row and file) and
    feeds training rows' features to the streaming statistics; nothing decoded is kept.
    """

    def __init__(self, final: Path, columns: dict[str, Column], meta: dict, *, shard_bytes: int = SHARD_BYTES,
                 keep_features: bool = False) -> None:
        self.final = Path(final)
        self.columns, self.meta, self.shard_bytes = columns, meta, shard_bytes
        # keep_features: every row's features, computed with the statistics' pass and standardised at close
        # (``features``): a small dataset built and then loaded by the same process computes its log-mel once
        self.keep_features = keep_features
        self.features: dict[str, np.ndarray] | None = None
        self._kept: dict[str, list[np.ndarray]] = {m: [] for m in columns}
        self.final.parent.mkdir(parents=True, exist_ok=True)
        remove_partials(self.final)
        self.tmp = self.final.parent / f"{self.final.name}.partial-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        (self.tmp / SHARDS).mkdir(parents=True)
        self.rows: dict[str, list] = {"key": [], "label": [], "split": [], "shard": []}
        for m in columns:
            self.rows[f"offset_{m}"], self.rows[f"size_{m}"], self.rows[f"ext_{m}"] = [], [], []
        self.shards: list[dict] = []
        self._tar: _Shard | None = None
        self._stats = {m: RunningStats() for m in columns}
        self._pending: dict[str, list[tuple[np.ndarray, bool]]] = {m: [] for m in columns}  # (raw, training row)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _open_shard(self) -> None:
        name = SHARD.format(len(self.shards))
        self._tar = _Shard(self.tmp / SHARDS / name)
        self.shards.append({"name": name})

    def _close_shard(self) -> None:
        self._tar.close()
        self._tar = None
        path = self.tmp / SHARDS / self.shards[-1]["name"]
        self.shards[-1].update(bytes=path.stat().st_size, sha256=artifacts.sha256_file(path))

    def _member(self, name: str, data: bytes) -> int:
        """Append a member; its data's byte offset in the shard."""
        return self._tar.add(name, data)

    def add(self, label: int, split: int, files: dict[str, bytes], key: str | None = None,
            sources: dict[str, str] | None = None, exts: dict[str, str] | None = None,
            samples: dict[str, np.ndarray] | None = None) -> None:
        """One row: its label (-1 unlabelled), split id and each column's file bytes. ``sources`` names each file
        for error messages (default the member name); ``exts`` a file's extension where it is not the column's
        (a column of PNGs and JPEGs); ``samples`` the decoded samples where the caller encoded them itself,
        losslessly (the built-in data: tests/test_data.py checks the round trip), so they are not decoded again."""
        row = len(self.rows["key"])
        key = key or f"{row:08d}"
        if "." in key or "/" in key:
            raise ValueError(f"row {row}: key {key!r} holds '.' or '/' (WebDataset keys cannot)")
        exts = {m: (exts or {}).get(m) or col.ext for m, col in self.columns.items()}
        samples = dict(samples or {})
        for m, col in self.columns.items():
            name = f"{key}.{m}.{exts[m]}"
            if m not in files:
                raise BadSample(row, key, m, name, "no file given")
            if samples is not None and m in samples:
                continue
            try:
                samples[m] = decode(col.spec, files[m])
            except (ValueError, OSError) as e:  # every decoder error is a ValueError subclass naming the fault
                raise BadSample(row, key, m, (sources or {}).get(m, name), str(e)) from None
        if self._tar is None:
            self._open_shard()
        for m in self.columns:
            offset = self._member(f"{key}.{m}.{exts[m]}", files[m])
            self.rows[f"offset_{m}"].append(offset)
            self.rows[f"size_{m}"].append(len(files[m]))
            self.rows[f"ext_{m}"].append(exts[m])
        self._member(f"{key}.cls", str(int(label)).encode())
        for k, v in (("key", key), ("label", int(label)), ("split", int(split)), ("shard", len(self.shards) - 1)):
            self.rows[k].append(v)
        if split == 0 or self.keep_features:
            for m in self.columns:
                self._pending[m].append((samples[m], split == 0))
                if len(self._pending[m]) >= STATS_CHUNK:
                    self._flush_stats(m)
        if self._tar.offset >= self.shard_bytes:
            self._close_shard()

    def _flush_stats(self, m: str) -> None:
        if self._pending[m]:
            pre = _pre_features(self.columns[m].frontend, np.stack([raw for raw, _ in self._pending[m]]))
            train = np.array([t for _, t in self._pending[m]])
            self._stats[m].add(pre if train.all() else pre[train])
            if self.keep_features:
                self._kept[m].append(pre)
            self._pending[m] = []

    def close(self, extras: dict[str, np.ndarray] | None = None) -> Path:
        """Finish: fitted frontends, ``index.npz`` (with the builder's per-row ``extras``), ``dataset.json`` last,
        then the rename into place. Returns the final ``dataset.json``."""
        if self._tar is not None:
            self._close_shard()
        n = len(self.rows["key"])
        if n == 0:
            raise ValueError(f"dataset {self.final.name}: no rows")
        frontends = {}
        for m, col in self.columns.items():
            self._flush_stats(m)
            try:
                fitted = fit(col.frontend, self._stats[m])
            except ValueError as e:
                raise ValueError(f"dataset {self.final.name}, column {m}: {e}") from None
            frontends[m] = fitted.to_dict()
            if self.keep_features:
                self.features = self.features or {}
                self.features[m] = standardise(fitted, np.concatenate(self._kept[m]))
                self._kept[m] = []
        index = {"key": np.array(self.rows["key"]), "label": np.array(self.rows["label"], np.int64),
                 "split": np.array(self.rows["split"], np.int8), "shard": np.array(self.rows["shard"], np.int32)}
        for m in self.columns:
            index[f"offset_{m}"] = np.array(self.rows[f"offset_{m}"], np.int64)
            index[f"size_{m}"] = np.array(self.rows[f"size_{m}"], np.int64)
            index[f"ext_{m}"] = np.array(self.rows[f"ext_{m}"])
        for k, v in (extras or {}).items():
            if k in index:
                raise ValueError(f"extra per-row array {k!r} clashes with the index's own")
            if len(v) != n:
                raise ValueError(f"extra per-row array {k!r} has {len(v)} rows, the dataset {n}")
            index[k] = np.asarray(v)
        artifacts.save_npz(self.tmp / INDEX, index)
        record = {"format": FORMAT, "version": VERSION, "rows": n, "meta": {**self.meta, "frontends": frontends},
                  "columns": {m: {"spec": spec_to_dict(c.spec), "ext": c.ext} for m, c in self.columns.items()},
                  "index": {"bytes": (self.tmp / INDEX).stat().st_size,
                            "sha256": artifacts.sha256_file(self.tmp / INDEX)},
                  "shards": self.shards}
        with artifacts.atomic_write(self.tmp / RECORD, "w") as f:
            f.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
        if self.final.exists():  # an older build of the same name (a forced rebuild): replaced whole
            old = self.final.parent / f"{self.final.name}.partial-{os.getpid()}-old"
            self.final.rename(old)
            self.tmp.rename(self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.final)
        return self.final / RECORD


# ------------------------------------------------------------------------------------------------ reading
def _fs(path: str):
    """(filesystem, root) of an fsspec URL."""
    try:
        import fsspec
    except ImportError:
        raise StoreError(f"dataset {path}: reading a URL needs fsspec (pip install fsspec)") from None
    return fsspec.core.url_to_fs(path)


class Store:
    """A dataset on disk, opened: ``len``, ``read(row, modality)`` -> the member's bytes, ``raw(row, modality, rng)``
    -> its decoded raw sample (audio: centre crop when ``rng`` is None, a random crop from ``rng`` otherwise).

    Opening checks the record and every shard's presence and size (a missing or truncated shard is a
    :class:`StoreError` naming it). File handles are kept per process and reopened after a fork (DataLoader
    workers each open their own)."""

    def __init__(self, path) -> None:
        s = str(path)
        if s.startswith("file://"):
            path = s = s.removeprefix("file://")
        self.url = "://" in s
        self.dir = dataset_dir(path)
        self._fsys = None
        if self.url:
            self._fsys, self._root = _fs(str(self.dir))
        rec_path = record_path(path)
        try:
            with self._open(RECORD) as f:
                self.record = json.loads(f.read().decode())
        except FileNotFoundError:
            raise StoreError(f"dataset {self.dir}: no {RECORD} (not a dataset, or a build that did not finish; "
                             "build it again)") from None
        except (OSError, ValueError) as e:
            raise StoreError(f"dataset record {rec_path} is unreadable: {e}") from None
        if self.record.get("format") != FORMAT or self.record.get("version") != VERSION:
            raise StoreError(f"dataset {self.dir}: format {self.record.get('format')!r} version "
                             f"{self.record.get('version')!r}, expected {FORMAT!r} version {VERSION}: rebuild it")
        for sh in self.record["shards"]:
            size = self._size(f"{SHARDS}/{sh['name']}")
            if size is None:
                raise StoreError(f"dataset {self.dir}: shard {sh['name']} is missing")
            if size != sh["bytes"]:
                raise StoreError(f"dataset {self.dir}: shard {sh['name']} holds {size} bytes, the record says "
                                 f"{sh['bytes']} ({'truncated' if size < sh['bytes'] else 'changed'}): rebuild it")
        try:
            with self._open(INDEX) as f:
                z = np.load(io.BytesIO(f.read()), allow_pickle=False)
                self.index = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise StoreError(f"dataset {self.dir}: {INDEX} is unreadable: {e}") from None
        if len(self.index["key"]) != self.record["rows"]:
            raise StoreError(f"dataset {self.dir}: {INDEX} holds {len(self.index['key'])} rows, the record "
                             f"{self.record['rows']}")
        self.meta: dict = self.record["meta"]
        self.columns = {m: spec_from_dict(c["spec"]) for m, c in self.record["columns"].items()}
        self.frontends = {m: frontend_from_dict(self.meta["frontends"][m]) for m in self.columns}
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    # files, local or through fsspec
    def _open(self, rel: str):
        if self._fsys is not None:
            return self._fsys.open(f"{self._root}/{rel}", "rb")
        return open(Path(self.dir) / rel, "rb")

    def _size(self, rel: str) -> int | None:
        try:
            if self._fsys is not None:
                return int(self._fsys.size(f"{self._root}/{rel}"))
            return (Path(self.dir) / rel).stat().st_size
        except (FileNotFoundError, OSError):
            return None

    def __len__(self) -> int:
        return int(self.record["rows"])

    def __getstate__(self) -> dict:  # DataLoader workers under spawn: handles are per process
        d = dict(self.__dict__)
        d["_handles"] = {}
        return d

    @property
    def labels(self) -> np.ndarray:
        return self.index["label"].astype(np.int64)

    @property
    def split(self) -> np.ndarray:
        return self.index["split"].astype(np.int8)

    def shard_of(self, row: int) -> str:
        return self.record["shards"][int(self.index["shard"][row])]["name"]

    def member(self, row: int, modality: str) -> str:
        return f"{self.index['key'][row]}.{modality}.{self.index[f'ext_{modality}'][row]}"

    def _handle(self, shard: int):
        if os.getpid() != self._pid:  # a forked worker: the parent's handles share its file offsets
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(shard)
        if f is None:
            name = self.record["shards"][shard]["name"]
            try:
                f = self._handles[shard] = self._open(f"{SHARDS}/{name}")
            except FileNotFoundError:
                raise StoreError(f"dataset {self.dir}: shard {name} is missing") from None
        return f

    def read(self, row: int, modality: str) -> bytes:
        """The bytes of a row's file."""
        if modality not in self.columns:
            raise KeyError(f"dataset {self.dir} has no column {modality!r} (it has {', '.join(self.columns)})")
        shard = int(self.index["shard"][row])
        offset, size = int(self.index[f"offset_{modality}"][row]), int(self.index[f"size_{modality}"][row])
        f = self._handle(shard)
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise StoreError(f"dataset {self.dir}: shard {self.shard_of(row)} ends inside member "
                             f"{self.member(row, modality)} (row {row}): truncated; rebuild it")
        return data

    def raw(self, row: int, modality: str, rng: np.random.Generator | None = None) -> np.ndarray:
        """A row's decoded raw sample (``kinds.decode`` with the crop policy)."""
        data = self.read(row, modality)
        try:
            return decode(self.columns[modality], data, rng)
        except ValueError as e:
            raise StoreError(f"dataset {self.dir}: row {row} (key {self.index['key'][row]}), shard "
                             f"{self.shard_of(row)}, member {self.member(row, modality)}: {e}") from None

    def feature_shape(self, modality: str) -> tuple[int, ...]:
        """A row's feature shape after the frontend ([C, H, W]; audio [1, n_mels, frames])."""
        fe = self.frontends[modality]
        return tuple(fe.feature_shape if isinstance(fe, ArrayFrontend) else fe.shape)

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles = {}


# ------------------------------------------------------------------------------------------------ encoding
def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 [1 or 3, H, W] or uint16 [1, H, W] -> PNG bytes (lossless, no timestamp: deterministic)."""
    from PIL import Image

    a = np.asarray(pixels)
    if a.dtype == np.uint16:  # Pillow picks the mode from the dtype: uint16 -> I;16, uint8 -> L or RGB
        im = Image.fromarray(np.ascontiguousarray(a[0]))
    elif a.shape[0] == 1:
        im = Image.fromarray(np.ascontiguousarray(a[0].astype(np.uint8)))
    else:
        im = Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0).astype(np.uint8)))
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def wav16_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """int16 mono samples -> a PCM16 WAV, bit for bit (``read_wav`` gives them back / 32768)."""
    import struct

    payload = np.asarray(samples, "<i2").tobytes()
    return (b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", len(payload)) + payload)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()
