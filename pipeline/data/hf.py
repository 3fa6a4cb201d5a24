"""A Hugging Face ``datasets`` folder (written by ``save_to_disk``) as a source of paired rows, beside manifests.

``data.manifest.path`` may name such a folder instead of a CSV/JSONL manifest: a ``Dataset`` (``state.json``,
``dataset_info.json``, ``data-*.arrow``) or a ``DatasetDict`` (``dataset_dict.json`` listing split folders, each a
``Dataset``). ``data.manifest.columns`` maps its columns: ``teacher`` and ``student`` (the two inputs), ``label``
and optional ``split`` and ``group``. Unset, ``teacher``/``student`` are the one column whose feature can hold the
configured kind (an ``Image`` column for image or depth, ``Audio`` for audio, an array for array), ``label`` is
the column named ``label`` (or the only ``ClassLabel`` column) and ``split`` the column named ``split``, if any.

What a column can hold, by its feature (``dataset_info.json``):

- ``Image`` / ``Audio``: a struct ``{bytes, path}`` per row in Arrow; the bytes are the source file as it was
  (PNG, JPEG, WAV ...), the kind of file is read from its first bytes. A row whose bytes are null but whose
  path names a file (a folder saved without embedding) reads that file, relative to the folder if not absolute.
- ``Value('binary')``: a file's bytes, any kind fdkd reads.
- ``Array2D``..``Array5D``, ``List``/``Sequence``/``LargeList`` of numbers: an ``array`` column; each row becomes a
  ``.npy`` of the feature's dtype (the manifest check then wants one shape in the column).
- the label: ``ClassLabel`` (its names; -1, ``datasets``' missing label, is an unlabelled row), a string or an
  integer; a null label is unlabelled, as an empty manifest cell.

A ``DatasetDict``'s splits are kept: ``train`` is train, ``validation`` (or ``valid``, ``val``, ``dev``) is val,
``test`` is test; another split name, a missing split or a ``split`` column beside them is a problem. A
``Dataset`` without a split column is split as a manifest is (``split_fractions``, grouped by ``group``).

The folder is read in place: the Arrow files are memory-mapped, every row becomes a manifest row whose
``teacher``/``student`` name a cell, ``<arrow file>#<row in it>/<column>.<ext>`` (``train/data-00000-of-00001
.arrow#3/image.png``), and ``Folder.read`` gives that cell's bytes on demand, so the manifest check
(``fdkd.pipeline.data.manifest.check``) runs every check of a manifest on them and the build streams them into
the dataset without a copy of the data in memory. Problems name the row (numbered from 1 over the splits in the
folder's order), the column and the cell; a missing column lists the columns found with their features.
Reading needs ``pyarrow`` (``pip install 'fdkd[hf]'``); the ``datasets`` package is not needed.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fdkd.pipeline.data.dataset import SPLITS

DICT_FILE = "dataset_dict.json"
STATE_FILE = "state.json"
INFO_FILE = "dataset_info.json"
ROLES = ("teacher", "student", "label", "split", "group")
# a DatasetDict's split names (and a split column's values) -> fdkd's
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}
# first bytes -> the file's extension (what fdkd's manifest check reads a file's kind by)
MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"\x93NUMPY", "npy"), (b"fLaC", "flac"),
         (b"OggS", "ogg"), (b"ID3", "mp3"), (b"GIF8", "gif"), (b"BM", "bmp"))
ARRAYS = ("Array2D", "Array3D", "Array4D", "Array5D")
LISTS = ("List", "Sequence", "LargeList")


class Problem(NamedTuple):
    """What is wrong, where: the fields of ``fdkd.pipeline.data.manifest.Problem`` (which the check makes of it);
    ``line`` is the row, from 1 over the splits in the folder's order, or 0 for the folder as a whole."""

    line: int
    column: str
    path: str
    message: str


def is_folder(path) -> bool:
    """A folder given where a manifest is expected: read as a Hugging Face datasets folder."""
    return Path(path).is_dir()


def _ext(head: bytes) -> str:
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in MAGIC if head.startswith(magic)), "bin")


def describe(feature) -> str:
    """A feature as ``datasets`` prints it, short: ``Image``, ``Value(string)``, ``Array2D((2, 3), float32)``."""
    if isinstance(feature, list):  # an old-style list of one feature
        return f"List({describe(feature[0])})" if feature else "List"
    if not isinstance(feature, dict):
        return type(feature).__name__
    t = feature.get("_type", "dict")
    if t == "Value":
        return f"Value({feature.get('dtype')})"
    if t in ARRAYS:
        return f"{t}({tuple(feature.get('shape', ()))}, {feature.get('dtype')})"
    if t in LISTS:
        inner = feature.get("feature")
        length = feature.get("length", -1)
        return f"{t}({describe(inner)}" + (f", length={length}" if length not in (-1, None) else "") + ")"
    return t if "_type" in feature else "{" + ", ".join(feature) + "}"


def _array_dtype(feature) -> str | None:
    """The numeric dtype of an array feature (ArrayND, or lists nested around one numeric Value; a list of one
    feature is how older ``datasets`` wrote a list); None otherwise."""
    if isinstance(feature, list):
        inner = feature[0] if len(feature) == 1 else None
    elif isinstance(feature, dict) and feature.get("_type") in ARRAYS:
        return feature.get("dtype") if _numeric(feature.get("dtype", "")) else None
    elif isinstance(feature, dict) and feature.get("_type") in LISTS:
        inner = feature.get("feature")
    else:
        return None
    if isinstance(inner, dict) and inner.get("_type") == "Value":
        return inner.get("dtype") if _numeric(inner.get("dtype", "")) else None
    return _array_dtype(inner)


def _numeric(dtype: str) -> bool:
    try:
        return np.dtype(dtype).kind in "biuf"
    except TypeError:
        return False


def feature_kinds(feature) -> tuple[str, ...]:
    """The kinds of data a column of this feature can hold (manifest kinds: image, depth, audio, array)."""
    t = feature.get("_type") if isinstance(feature, dict) else None
    if t == "Image":
        return ("image", "depth")
    if t == "Audio":
        return ("audio",)
    if t == "Value" and feature.get("dtype") in ("binary", "large_binary"):
        return ("image", "depth", "audio", "array")
    dtype = _array_dtype(feature)
    return ("array",) if dtype is not None and _numeric(dtype) else ()


@dataclass(eq=False)
class _File:
    """One memory-mapped Arrow file of a split: its record batches and where each starts."""

    rel: str  # path inside the folder, as problems name it
    batches: list
    starts: np.ndarray

    def cell(self, row: int, column: str):
        b = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.batches[b].column(column), row - int(self.starts[b])


@dataclass(eq=False)
class _Split:
    name: str  # the folder's split name ("" for a Dataset)
    rel: str  # its folder inside the dataset folder ("" for a Dataset)
    features: dict
    files: list[_File]


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401  (pa.ipc is a submodule)
    except ImportError:
        raise ImportError("reading a Hugging Face datasets folder needs pyarrow: pip install 'fdkd[hf]'") from None
    return pa


def _read_json(path: Path, what: str, problems: list) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(Problem(0, "", str(path), f"no {path.name}: not a Hugging Face datasets folder ({what})"))
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(Problem(0, "", str(path), f"unreadable {path.name}: {e}"))
        return None
    if not isinstance(doc, dict):
        problems.append(Problem(0, "", str(path), f"{path.name} is not a JSON object"))
        return None
    return doc


class Folder:
    """A ``save_to_disk`` folder, opened: its splits, the column mapping resolved, schema problems found.

    ``rows()`` are manifest rows (line = row number from 1), ``read(cell)`` one cell's file bytes."""

    def __init__(self, path: Path, splits: list[_Split], columns: dict[str, str], problems: list) -> None:
        self.path, self.splits, self.columns, self.problems = path, splits, columns, problems
        self._files = {f.rel: (f, s.features) for s in splits for f in s.files}  # cell lookups: by name only

    # ---------------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path, columns: dict[str, str | None] | None = None,
             kinds: dict[str, str] | None = None) -> Folder:
        """Open the folder and map its columns (``columns``: role -> column name; ``kinds``: the configured kind
        of ``teacher`` and ``student``, which an unmapped role's column is found by). Problems are kept in
        ``problems``; reading them needs no data."""
        path = Path(path)
        problems: list = []
        splits = cls._splits(path, problems)
        mapping = cls._columns(path, splits, dict(columns or {}), kinds or {}, problems) if splits else {}
        return cls(path, splits, mapping, problems)

    @staticmethod
    def _splits(path: Path, problems: list) -> list[_Split]:
        if (path / DICT_FILE).is_file():
            doc = _read_json(path / DICT_FILE, "a DatasetDict", problems)
            names = doc.get("splits") if doc else None
            if doc is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
                problems.append(Problem(0, "", str(path / DICT_FILE), "'splits' is not a list of split names"))
                return []
            entries = [(n, n) for n in names or []]
            unknown = [n for n in names or [] if n not in SPLIT_NAMES]
            if unknown:
                problems.append(Problem(0, "split", str(path / DICT_FILE), f"split(s) {', '.join(map(repr, unknown))}"
                                        f" of the DatasetDict are not train, validation or test (names read as "
                                        f"splits: {', '.join(SPLIT_NAMES)}); save the DatasetDict with those"))
            have = {SPLIT_NAMES[n] for n in names or [] if n in SPLIT_NAMES}
            if names and not unknown and have != set(SPLITS):
                missing = [{"val": "validation"}.get(s, s) for s in SPLITS if s not in have]
                problems.append(Problem(0, "split", str(path / DICT_FILE), f"the DatasetDict has the split(s) "
                                        f"{', '.join(names)} but no {' and no '.join(missing)}: fdkd keeps a "
                                        "DatasetDict's splits, so save all three (e.g. carve a validation split from "
                                        "train with train_test_split), or save one Dataset to have it split"))
        elif (path / STATE_FILE).is_file():
            entries = [("", "")]
        else:
            problems.append(Problem(0, "", str(path), f"a folder but not a Hugging Face datasets folder: neither "
                                    f"{DICT_FILE} (a DatasetDict) nor {STATE_FILE} (a Dataset) is in it, as "
                                    "save_to_disk writes them; a manifest is a .csv or .jsonl file"))
            return []
        pa = _pa()
        out = []
        for name, rel in entries:
            folder = path / rel
            state = _read_json(folder / STATE_FILE, f"split {name!r}" if name else "a Dataset", problems)
            info = _read_json(folder / INFO_FILE, f"split {name!r}" if name else "a Dataset", problems)
            if state is None or info is None:
                continue
            if state.get("_indices_data_files"):
                problems.append(Problem(0, "", str(folder / STATE_FILE), "the split has an indices mapping (a "
                                        "select/shuffle not flattened); save it again with save_to_disk"))
                continue
            files = []
            for entry in state.get("_data_files") or []:
                fname = entry.get("filename", "") if isinstance(entry, dict) else ""
                frel = f"{rel}/{fname}" if rel else fname
                try:
                    src = pa.memory_map(str(path / frel))
                    try:
                        batches = list(pa.ipc.open_stream(src))  # datasets writes the IPC stream format
                    except pa.ArrowInvalid:
                        batches = [b for b in pa.ipc.open_file(src).iter_batches()]  # noqa: C416
                except FileNotFoundError:
                    problems.append(Problem(0, "", frel, f"Arrow file listed in {rel + '/' if rel else ''}"
                                            f"{STATE_FILE} not found"))
                    continue
                except (OSError, pa.ArrowException) as e:
                    problems.append(Problem(0, "", frel, f"unreadable Arrow file: {e}"))
                    continue
                starts = np.cumsum([0] + [b.num_rows for b in batches])
                files.append(_File(frel, batches, starts))
            features = info.get("features") or {}
            if not isinstance(features, dict):
                problems.append(Problem(0, "", str(folder / INFO_FILE), "'features' is not a mapping of columns"))
                continue
            out.append(_Split(name, rel, features, files))
        return out

    @staticmethod
    def _columns(path: Path, splits: list[_Split], given: dict, kinds: dict, problems: list) -> dict[str, str]:
        unknown = sorted(set(given) - set(ROLES))
        if unknown:
            problems.append(Problem(0, "", "", f"data.manifest.columns has {', '.join(unknown)}; it maps "
                                    f"{', '.join(ROLES)}"))
        features = splits[0].features
        listing = ", ".join(f"{c} ({describe(f)})" for c, f in features.items()) or "none"
        where = splits[0].rel or str(path)
        mapping: dict[str, str] = {}
        want = {"teacher": kinds.get("teacher", "image"), "student": kinds.get("student", "audio")}
        for role in ("teacher", "student"):
            name = given.get(role)
            if name is None:
                taken = set(given.values()) | set(mapping.values())
                fits = [c for c, f in features.items() if want[role] in feature_kinds(f) and c not in taken]
                if len(fits) != 1:
                    problems.append(Problem(0, role, where, f"which column is the {role} ({want[role]})? "
                                            + (f"{len(fits)} columns can be: {', '.join(fits)}" if fits else
                                               "no column's feature can hold it")
                                            + f"; set data.manifest.columns.{role} (columns: {listing})"))
                    continue
                name = fits[0]
            mapping[role] = name
        if mapping.get("teacher") and mapping.get("teacher") == mapping.get("student"):
            problems.append(Problem(0, "student", where, f"teacher and student are both column "
                                    f"{mapping['teacher']!r}; map two columns"))
        label = given.get("label")
        if label is None:
            classlabels = [c for c, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"]
            label = "label" if "label" in features else classlabels[0] if len(classlabels) == 1 else None
            if label is None:
                problems.append(Problem(0, "label", where, f"no label column: none is named 'label' and "
                                        f"{len(classlabels)} are ClassLabel features; set data.manifest.columns.label "
                                        f"(columns: {listing})"))
        if label is not None:
            mapping["label"] = label
        split = given.get("split") or ("split" if "split" in features and not any(s.name for s in splits) else None)
        if split is not None and any(s.name for s in splits):
            problems.append(Problem(0, "split", str(path / DICT_FILE), f"data.manifest.columns.split is {split!r}, "
                                    "but a DatasetDict's splits are its split folders; leave it unset"))
        elif split is not None:
            mapping["split"] = split
        if given.get("group"):
            mapping["group"] = given["group"]
        found: dict[tuple[str, str], list[str]] = {}  # (role, message) -> the splits it holds for: said once
        for s in splits:  # every split has every mapped column, of a feature that can hold the role
            here = ", ".join(f"{c} ({describe(f)})" for c, f in s.features.items()) or "none"
            for role, name in mapping.items():
                f = s.features.get(name)
                if f is None:
                    why = f"column {name!r} (data.manifest.columns.{role}) is missing; the columns are: {here}"
                elif role in ("teacher", "student") and (want[role] not in feature_kinds(f) if role in kinds
                                                         else not feature_kinds(f)):
                    need = {"image": "an Image", "depth": "an Image", "audio": "an Audio"}.get(
                        want[role], "an array (ArrayND, or a List of numbers)")
                    needs = f"the {role} ({want[role]}) needs {need} feature" if role in kinds else \
                        f"the {role} needs an Image, Audio or array feature"
                    why = f"column {name!r} holds {describe(f)}; {needs} (or Value(binary) file bytes); columns: {here}"
                elif role == "label" and not _label_feature(f):
                    why = f"column {name!r} holds {describe(f)}; a label is a ClassLabel, a string or an integer"
                elif role in ("split", "group") and not (isinstance(f, dict) and f.get("_type") == "Value"
                                                         and f.get("dtype") in ("string", "large_string")):
                    why = f"column {name!r} holds {describe(f)}; a {role} column holds strings"
                else:
                    continue
                found.setdefault((role, why), []).append(s.rel or str(path))
            for f in s.files:
                schema = f.batches[0].schema.names if f.batches else list(s.features)
                lost = [n for n in mapping.values() if n in s.features and n not in schema]
                if lost:
                    problems.append(Problem(0, "", f.rel, f"column(s) {', '.join(lost)} of {INFO_FILE} are not "
                                            f"in the Arrow file (it has {', '.join(schema)})"))
        problems += [Problem(0, role, ", ".join(where), why) for (role, why), where in found.items()]
        return mapping

    # ---------------------------------------------------------------------------------------------- reading
    def stamp(self) -> list:
        """What identifies this version of the folder, for the dataset's cache key: every JSON file's bytes'
        sha256 and every Arrow file's size and modification time."""
        from fdkd import artifacts

        out = []
        for p in sorted(self.path.rglob("*.json")) + sorted(self.path.rglob("*.arrow")):
            st = p.stat()
            rel = p.relative_to(self.path).as_posix()
            out.append([rel, artifacts.sha256_file(p)] if p.suffix == ".json" else [rel, st.st_size, st.st_mtime_ns])
        return out

    def rows(self) -> tuple[list[tuple[int, dict]], list]:
        """Every row as a manifest row (row number from 1, fields); the folder's problems, and each cell's that
        the manifest check cannot see (a label outside its ClassLabel's names)."""
        if self.problems:
            return [], list(self.problems)
        rows, problems = [], []
        n = 0
        for s in self.splits:
            label_names = (s.features[self.columns["label"]].get("names")
                           if isinstance(s.features[self.columns["label"]], dict) else None)
            for f in s.files:
                for batch, start in zip(f.batches, f.starts, strict=False):
                    cols = {role: _Column(batch.column(name), s.features[name]) for role, name in self.columns.items()}
                    for j in range(batch.num_rows):
                        n += 1
                        row_in_file = int(start) + j
                        row = {"split": SPLIT_NAMES[s.name]} if s.name else {}
                        for role, col in cols.items():
                            if role in ("teacher", "student"):
                                ext = col.ext(j, self.path)
                                row[role] = f"{f.rel}#{row_in_file}/{self.columns[role]}.{ext}" if ext else ""
                            elif role == "label":
                                row[role], bad = _label(col.value(j), label_names)
                                if bad:
                                    problems.append(Problem(n, "label", f"{f.rel}#{row_in_file}", bad))
                            else:
                                v = col.value(j)
                                row[role] = "" if v is None else SPLIT_NAMES.get(v.strip(), v.strip()) \
                                    if role == "split" else v.strip()
                        rows.append((n, row))
        return rows, problems

    def read(self, cell: str) -> bytes:
        """The file bytes of one cell (``<arrow file>#<row>/<column>.<ext>``, as ``rows`` names them)."""
        rel, _, rest = cell.rpartition("#")
        row, _, colext = rest.partition("/")
        name = colext.rsplit(".", 1)[0]
        f, features = self._files[rel]
        arr, j = f.cell(int(row), name)
        return _Column(arr, features[name]).bytes(j, self.path)


def _label_feature(f) -> bool:
    if isinstance(f, dict) and f.get("_type") == "ClassLabel":
        return True
    return isinstance(f, dict) and f.get("_type") == "Value" and (
        f.get("dtype") in ("string", "large_string") or (_numeric(f.get("dtype", "")) and
                                                          np.dtype(f["dtype"]).kind in "iu"))


def _label(v, names: list[str] | None) -> tuple[str, str]:
    """(the label as a manifest cell, a problem or ""): ClassLabel ids become names, -1 and null unlabelled."""
    if v is None:
        return "", ""
    if names is not None:
        if v == -1:
            return "", ""
        if not 0 <= v < len(names):
            return "", f"label {v} is outside the ClassLabel's {len(names)} names (0..{len(names) - 1}, or -1: none)"
        return str(names[v]).strip(), ""
    return str(v).strip(), ""


class _Column:
    """One column of one record batch: cells as file bytes (media, binary, arrays) or values (labels, splits)."""

    def __init__(self, arr, feature) -> None:
        self.arr, self.feature = arr, feature
        t = feature.get("_type") if isinstance(feature, dict) else None
        self.struct = t in ("Image", "Audio")
        self.array_dtype = None if self.struct or t == "Value" else _array_dtype(feature)
        if self.struct:
            parts = dict(zip([arr.type.field(i).name for i in range(arr.type.num_fields)], arr.flatten(),
                             strict=True))
            self.data, self.paths = parts.get("bytes"), parts.get("path")
        else:
            self.data, self.paths = arr, None

    def value(self, j: int):
        return self.arr[j].as_py()

    def _path(self, j: int, root: Path) -> Path | None:
        if self.paths is None or not self.paths[j].is_valid:
            return None
        p = Path(self.paths[j].as_py())
        return p if p.is_absolute() else root / p

    def ext(self, j: int, root: Path) -> str:
        """The cell's file type by its first bytes ("" for an empty cell, "bin" for a type fdkd does not know)."""
        if not self.arr[j].is_valid:
            return ""
        if self.array_dtype is not None:
            return "npy"
        if self.data is not None and self.data[j].is_valid:
            return _ext(_head(self.data, j))
        p = self._path(j, root)
        if p is None:
            return ""
        try:
            with open(p, "rb") as fh:
                return _ext(fh.read(12))
        except OSError:
            return p.suffix.lstrip(".").lower() or "bin"

    def bytes(self, j: int, root: Path) -> bytes:
        if self.array_dtype is not None:
            try:
                a = np.asarray(self.arr[j].as_py(), dtype=self.array_dtype)
            except (ValueError, TypeError):  # lists of uneven lengths, or a null inside
                raise ValueError("the array cell is ragged or holds nulls: not one fixed shape of numbers") from None
            buf = io.BytesIO()
            np.save(buf, a, allow_pickle=False)
            return buf.getvalue()
        if self.data is not None and self.data[j].is_valid:
            return self.data[j].as_py()
        p = self._path(j, root)
        if p is None:
            raise FileNotFoundError("the cell is empty")
        try:
            return p.read_bytes()
        except OSError as e:
            raise FileNotFoundError(f"no bytes in the Arrow file, and its path {p} is unreadable "
                                    f"({e.strerror})") from None


def _head(arr, j: int, n: int = 12) -> bytes:
    """The first ``n`` bytes of a binary cell, without copying the rest (the Arrow file stays mapped)."""
    import pyarrow as pa

    large = pa.types.is_large_binary(arr.type)
    offsets = np.frombuffer(arr.buffers()[1], np.int64 if large else np.int32)
    start, end = int(offsets[arr.offset + j]), int(offsets[arr.offset + j + 1])
    return arr.buffers()[2][start : min(end, start + n)].to_pybytes()
