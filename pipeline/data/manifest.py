"""User paired data: validate a CSV/JSONL manifest and turn it into a dataset (``fdkd.pipeline.data.store``).

A manifest has one row per pair with columns ``teacher`` (file of the teacher's modality),
``student`` (file of the student's modality), ``label`` (a class name) and optionally ``split``
(train/val/test, on every row or on none) and ``group`` (rows with one group value stay in one
split). Paths are relative to the manifest's folder. CSV may carry a UTF-8 byte-order mark and CRLF
line ends; a header without the required columns is reported with what was read and the delimiter.

Each column holds one kind of data (``fdkd.pipeline.data.kinds``): ``image`` (PNG/JPEG, any mode: grey, or RGB
when any file has colour), ``depth`` (single-channel 16-bit PNG, every level kept), ``audio`` (WAV, PCM
8/16/24/32-bit or float, any channel count: mixed to mono, resampled to ``sample_rate``) or ``array``
(``.npy``, one shape and dtype per column). The config names each column's kind (``teacher_modality``,
``student_modality``); without a config (``fdkd data manifest``) the files say it (a column of 16-bit grey PNGs
is depth). Image size and clip length are the files' own when they agree; when they do not, the check names the
sizes found, with row counts and example lines, and asks for ``image_size`` / ``clip_seconds`` (a problem for a
run, a warning for the bare check). What the build changes (resizes, resampling, crops, pads) is logged with its
numbers (``Checked.notes``).

An empty ``label`` cell (JSONL: ``""`` or ``null``) marks an unlabelled pair: allowed in the training
split only (a val/test row needs its label; without a ``split`` column every unlabelled row, and every
row sharing a file or group with it, goes to train). Class names come from the labelled rows; the
dataset file holds -1 (``fdkd.pipeline.data.labels.UNLABELLED``) for an unlabelled row. The teacher trains
on the labelled training rows, so a manifest with none needs ``teacher.checkpoint`` (``require_labels``).

``check_manifest`` reads every row and fully decodes every file and returns **all** problems at once, each
naming the row (the line in the file), the column and the path: missing, unreadable, corrupt, truncated,
empty or oversized files, unsupported types, an 8-bit or colour PNG in a depth column, arrays of another
shape or dtype than the column's, NaN/Inf samples, wrong JSON types, unknown labels, labels differing only
in case or spacing, empty labels outside the training split, duplicate rows (a pair given labelled and
unlabelled too), a file given two labels, a partly filled ``split`` column, rows sharing a file split
apart, splits left empty, classes with no labelled training row, and kinds mixed within a column.
``build`` runs the same checks and writes nothing unless there is no problem.

The manifest path may instead be a Hugging Face ``datasets`` folder (``save_to_disk``; ``fdkd.pipeline.data.hf``,
its columns mapped by ``data.manifest.columns``): its rows become manifest rows whose cells are read in place, and
every check above applies, with problems counted in rows instead of lines.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fdkd import artifacts
from fdkd.pipeline.data import hf
from fdkd.pipeline.data.dataset import SPLITS
from fdkd.pipeline.data.kinds import EXTENSIONS, ColumnSpec, frontend, kind_of, kinds_of_file
from fdkd.pipeline.data.labels import UNLABELLED
from fdkd.pipeline.data.splits import grouped_split, row_groups
from fdkd.pipeline.data.store import BadSample, Column, StoreWriter, exists, record_path
from fdkd.serving.array import read_npy
from fdkd.serving.image import ImageError, decode_depth, decode_image, image_info, is_depth_png
from fdkd.serving.preprocess import array_feature_shape
from fdkd.serving.wav import WavError, read_wav

log = logging.getLogger(__name__)
BUILDER_VERSION = 5  # 2: grouped splits, shared image decoder; 3: empty label cells are unlabelled (-1); 4: kinds;
# 5: the on-disk store (the files' bytes in tar shards) instead of one .npz of decoded arrays
COLUMNS = ("teacher", "student", "label")
OPTIONAL = ("split", "group")
DEFAULT_MAX_FILE_MB = 64.0
FLOAT_WAV_LIMIT = 4.0  # float WAVs are [-1, 1]; a little overshoot is normal, thousands mean unscaled PCM values
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
NO_TRAINING_LABEL = "no training row is labelled"
SETTING = "setting"


class ManifestError(ValueError):
    """The manifest has problems; ``problems`` lists every one."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [f"{path}: {len(problems)} problem(s)"] + [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Problem:
    line: int  # line in the manifest file (header is line 1 for CSV); a Hugging Face folder's row, from 1; 0: none
    column: str
    path: str
    message: str
    needs: str = ""  # SETTING: the files are fine, the run needs a setting (a warning where no config is at hand)
    unit: str = "line"  # what ``line`` counts: "row" in a Hugging Face datasets folder (fdkd.pipeline.data.hf)

    def __str__(self) -> str:
        where = ", ".join(([f"{self.unit} {self.line}"] if self.line else []) + ([self.column] if self.column else []))
        return (f"{where}: " if where else "") + self.message + (f" ({self.path})" if self.path else "")


@dataclass
class Checked:
    """What ``check`` found: rows, problems, each column's decoding settings, the split."""

    rows: list[tuple[int, dict]]
    problems: list[Problem]
    specs: dict[str, ColumnSpec] = field(default_factory=dict)  # column -> its kind and sizes
    notes: list[str] = field(default_factory=list)  # resizes, resampling, crops: what the build changes, in numbers
    split: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # fine to run, but worth knowing
    labels: np.ndarray | None = None  # class id per row, -1 on an unlabelled row (set with ``split``)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split: rows, labelled and unlabelled ({} until the split is known)."""
        if self.split is None or self.labels is None:
            return {}
        out = {}
        for s, name in enumerate(SPLITS):
            idx = self.split == s
            lab = int((idx & (self.labels >= 0)).sum())
            out[name] = {"rows": int(idx.sum()), "labelled": lab, "unlabelled": int(idx.sum()) - lab}
        return out


def _lines_text(lines: list[int], limit: int = 8) -> str:
    shown = ", ".join(map(str, lines[:limit]))
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


def _jsonl_row(line: int, obj: dict) -> tuple[dict, list[Problem]]:
    row, problems = {}, []
    for k, v in obj.items():
        if v is None:
            row[k] = ""
        elif isinstance(v, str):
            row[k] = v.strip()
        elif k in ("label", "group") and isinstance(v, int) and not isinstance(v, bool):
            row[k] = str(v)
        elif k in COLUMNS + OPTIONAL:
            want = "a string or an integer" if k in ("label", "group") else "a string"
            problems.append(Problem(line, k, "", f"must be {want}, got {type(v).__name__} {json.dumps(v)[:40]}"))
            row[k] = ""
    return row, problems


def _header_hint(header: list[str]) -> str:
    """What was read as the header, and the likely cause: another delimiter, or columns of other names."""
    read = ", ".join(repr(h) for h in header[:8]) + (" ..." if len(header) > 8 else "")
    hint = f" (read {len(header)} column(s) with the delimiter ',': {read}"
    others = [d for d in (";", "\t", "|") if any(d in h for h in header)]
    if others:
        return hint + f"; the header holds {others[0]!r}: fdkd reads comma-separated CSV, so save it with commas)"
    return hint + f"; the columns must be named {', '.join(COLUMNS)}, with optional {', '.join(OPTIONAL)})"


def label_key(label: str) -> str:
    """Labels equal up to case and spacing share a key (``' Zero'``, ``'zero'``, ``'ZERO '``)."""
    return " ".join(label.split()).casefold()


def read_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Rows as (line number, fields); rows that cannot be read become problems."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    if not path.is_file():
        raise ValueError(f"manifest {path} is not a file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"manifest {path} must be .csv or .jsonl")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"manifest {path} is unreadable: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return [], [Problem(raw[: e.start].count(b"\n") + 1, "", "", f"not UTF-8 text (byte {raw[e.start]:#04x})")]
    rows, problems = [], []
    if suffix in (".jsonl", ".ndjson"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(Problem(i, "", "", f"not valid JSON: {e.msg}"))
                continue
            if not isinstance(obj, dict):
                problems.append(Problem(i, "", "", "a JSONL row must be a JSON object"))
                continue
            row, found = _jsonl_row(i, obj)
            rows.append((i, row))
            problems.extend(found)
        return rows, problems
    reader = csv.reader(text.splitlines())
    try:
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            return [], [Problem(1, c, "", f"required column is missing from the header{_header_hint(header)}")
                        for c in missing]
        for fields in reader:
            line = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                problems.append(Problem(line, "", "", f"row has {len(fields)} fields; the header has {len(header)}"))
                continue
            rows.append((line, {k: v.strip() for k, v in zip(header, fields, strict=True)}))
    except csv.Error as e:
        problems.append(Problem(reader.line_num, "", "", f"not valid CSV: {e}"))
    return rows, problems


@dataclass(frozen=True)
class FileInfo:
    """What reading one file found: its kind and the sizes the column must agree on."""

    kind: str  # image, depth (a single-channel 16-bit PNG), audio, array
    size: tuple[int, int] | None = None  # image/depth (height, width), after EXIF orientation
    channels: int = 1  # image: 1 grey, 3 colour
    rate: int = 0  # audio: the file's sample rate
    frames: int = 0  # audio: samples per channel at the file's rate
    shape: tuple[int, ...] | None = None  # array
    dtype: str = ""  # array
    sixteen_bit_grey: bool = False  # image: a single-channel 16-bit PNG (a depth map read as an image?)


def _inspect(root: Path, line: int, column: str, rel: str, want: str | None,
             max_bytes: float, read=None) -> tuple[FileInfo | None, list[Problem]]:
    """Read and fully decode one file (so a corrupt one is found here, by row); ``want`` is the column's kind
    when the config names it (an image column wanting depth decodes as depth). ``read``: where the file's bytes
    come from when they are not a file under ``root`` (a Hugging Face folder's cell: ``hf.Folder.read``)."""
    if not rel:
        return None, [Problem(line, column, "", "no file given")]
    path = root / rel
    can = kinds_of_file(rel)
    if not can:
        return None, [Problem(line, column, rel, "unsupported file type (want .wav, .png, .jpg, .jpeg, .npy)")]
    if want is not None and want not in can:
        return None, [Problem(line, column, rel, f"column mixes modalities: a {Path(rel).suffix} file "
                              f"({'/'.join(can)}) in the {want} column; every file of a column is of its kind")]
    if read is None and not path.is_file():
        return None, [Problem(line, column, rel, "file not found")]
    try:
        size = len(raw := read(rel)) if read is not None else path.stat().st_size
        if size > max_bytes:
            return None, [Problem(line, column, rel, f"file is {size / 2**20:.1f} MB, over the "
                                  f"{max_bytes / 2**20:g} MB limit (data.manifest.max_file_mb)")]
        if read is None:
            raw = path.read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a datasets folder's cell that is no file (hf.Folder.read)
        return None, [Problem(line, column, rel, f"unreadable: {getattr(e, 'strerror', None) or e}")]
    if not raw:
        return None, [Problem(line, column, rel, "empty file")]
    if can == ("audio",):
        try:
            wav = read_wav(raw)
        except WavError as e:
            return None, [Problem(line, column, rel, f"unreadable WAV: {e}")]
        problems = []
        if wav.samples.size == 0:
            problems.append(Problem(line, column, rel, "WAV has no samples"))
        elif not np.isfinite(wav.samples).all():
            problems.append(Problem(line, column, rel, "WAV contains NaN or Inf samples"))
        elif wav.format.startswith("float") and np.abs(wav.samples).max() > FLOAT_WAV_LIMIT:
            problems.append(Problem(line, column, rel, f"float WAV samples reach {np.abs(wav.samples).max():.4g}; "
                                    "float WAVs hold samples in [-1, 1] (this one looks unscaled)"))
        return (None if problems else FileInfo("audio", rate=wav.sample_rate, frames=len(wav.samples))), problems
    if can == ("array",):
        try:
            arr = read_npy(raw)
            array_feature_shape(arr.shape)
        except ValueError as e:  # ArrayError, or more axes than the encoders take
            return None, [Problem(line, column, rel, str(e))]
        return FileInfo("array", shape=tuple(arr.shape), dtype=arr.dtype.name), []
    try:
        if want == "depth" or (want is None and is_depth_png(raw)):
            return FileInfo("depth", size=decode_depth(raw).shape[1:]), []
        pixels = decode_image(raw, 1)  # first: the decoder's limits (pixels, PNG metadata) before anything else
        mode, _, _ = image_info(raw)
    except ImageError as e:
        return None, [Problem(line, column, rel, str(e))]
    grey = mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")
    if mode == "P":  # a palette of greys is grey
        from PIL import Image

        with Image.open(io.BytesIO(raw)) as im:
            rgb = np.asarray(im.convert("RGB"), np.int16)
        grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return FileInfo("image", size=pixels.shape[1:], channels=1 if grey else 3, sixteen_bit_grey=is_depth_png(raw)), []


def _counted(values: list, lines: list[int], unit: str = "line") -> str:
    """'32x32 (40 rows, e.g. lines 2, 3, 5), 48x64 (3 rows, e.g. line 7)': each value, its rows and examples."""
    by: dict = {}
    for v, line in zip(values, lines, strict=True):
        by.setdefault(v, []).append(line)
    parts = []
    for v, ls in sorted(by.items(), key=lambda kv: -len(kv[1])):
        shown = f"{unit}{'s' if len(ls) > 1 else ''} {_lines_text(ls, 3)}"
        parts.append(f"{_fmt(v)} ({len(ls)} row{'s' if len(ls) > 1 else ''}, e.g. {shown})")
    return ", ".join(parts)


def _fmt(v) -> str:
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return f"{v[0]}x{v[1]}"
    return str(v)


@dataclass(frozen=True)
class Settings:
    """The manifest settings the data check resolves against the files (None: take the files' own)."""

    sample_rate: int = 16000
    image_size: tuple[int, int] | None = None
    student_image_size: tuple[int, int] | None = None
    image_channels: int | None = None
    clip_seconds: float | None = None
    depth_scale: float = 0.001
    kinds: dict[str, str] | None = None  # column -> kind, when the config names them

    @classmethod
    def of(cls, mcfg, student_modality: str | None = None) -> Settings:
        sm = student_modality or mcfg.student_modality or ("audio" if mcfg.teacher_modality == "image" else "image")
        return cls(mcfg.sample_rate, mcfg.image_size, mcfg.student_image_size, mcfg.image_channels,
                   mcfg.clip_seconds, mcfg.depth_scale, {"teacher": kind_of(mcfg.teacher_modality),
                                                         "student": kind_of(sm)})


def _column_spec(col: str, kind: str, files: list[tuple[int, str, FileInfo]], st: Settings,
                 notes: list[str], unit: str = "line") -> tuple[ColumnSpec | None, list[Problem]]:
    """One column's decoding settings from its files (line, path, info) and the config; problems where they do not
    agree."""
    if not files:
        return None, []
    lines = [ln for ln, _, _ in files]
    infos = [i for _, _, i in files]
    first = lines[0]
    if kind in ("image", "depth"):
        size = st.student_image_size if col == "student" and st.student_image_size else st.image_size
        sizes = [i.size for i in infos]
        setting = "data.manifest.student_image_size" if col == "student" else "data.manifest.image_size"
        if size is None:
            if len(set(sizes)) > 1:
                return None, [Problem(first, col, "", f"{kind} files differ in size (height x width): "
                                      f"{_counted(sizes, lines, unit)}; set {setting} to [height, width] to resize "
                                      "every file to one size", SETTING)]
            size = sizes[0]
        changed = [(s, ln) for s, ln in zip(sizes, lines, strict=True) if s != tuple(size)]
        if changed:
            notes.append(f"{col}: {len(changed)} of {len(sizes)} {kind} files resized to {_fmt(tuple(size))} "
                         f"({'nearest-neighbour' if kind == 'depth' else 'bilinear'}): "
                         f"{_counted([s for s, _ in changed], [ln for _, ln in changed], unit)}")
        if kind == "depth":
            return ColumnSpec("depth", size=tuple(size), depth_scale=st.depth_scale), []
        deep = sum(i.sixteen_bit_grey for i in infos)
        if deep:
            setting = "data.manifest.student_modality" if col == "student" else "data.manifest.teacher_modality"
            notes.append(f"{col}: {deep} 16-bit single-channel PNG(s) read as 8-bit images (level / 257); if they "
                         f"are depth maps, set {setting}=depth to keep every level")
        colours = [i.channels for i in infos]
        channels = st.image_channels or max(colours)
        if channels == 1 and max(colours) == 3:
            notes.append(f"{col}: {colours.count(3)} colour image(s) become grey (data.manifest.image_channels=1)")
        elif channels == 3 and min(colours) == 1:
            notes.append(f"{col}: {colours.count(1)} grey image(s) repeated into 3 channels (the column also holds "
                         "colour images)")
        return ColumnSpec("image", size=tuple(size), channels=channels), []
    if kind == "audio":
        rates = [i.rate for i in infos]
        lengths = [int(np.ceil(i.frames * st.sample_rate / i.rate)) for i in infos]  # resample_poly's length
        if st.clip_seconds is None:
            if len(set(lengths)) > 1:
                secs = [f"{n / st.sample_rate:.3f} s" for n in lengths]
                return None, [Problem(first, col, "", f"clips differ in length at {st.sample_rate} Hz: "
                                      f"{_counted(secs, lines, unit)}; set data.manifest.clip_seconds (longer clips "
                                      "keep their centre, shorter ones are zero-padded at the end)", SETTING)]
            clip = lengths[0]
        else:
            clip = int(round(st.clip_seconds * st.sample_rate))
        other = [(r, ln) for r, ln in zip(rates, lines, strict=True) if r != st.sample_rate]
        if other:
            notes.append(f"{col}: {len(other)} of {len(rates)} clips resampled to {st.sample_rate} Hz (polyphase "
                         f"filter) from {_counted([r for r, _ in other], [ln for _, ln in other], unit)}")
        longer, shorter = sum(n > clip for n in lengths), sum(n < clip for n in lengths)
        if longer or shorter:
            notes.append(f"{col}: clip length {clip / st.sample_rate:g} s ({clip} samples): {longer} longer clip(s) "
                         f"cut to their centre, {shorter} shorter one(s) zero-padded at the end")
        return ColumnSpec("audio", sample_rate=st.sample_rate, clip_samples=clip), []
    shapes = [i.shape for i in infos]
    dtypes = [i.dtype for i in infos]
    problems = []
    for name, values in (("shape", shapes), ("dtype", dtypes)):
        want = max(set(values), key=lambda v: (values.count(v), -values.index(v)))
        for v, (line, rel, _) in zip(values, files, strict=True):
            if v != want:
                problems.append(Problem(line, col, rel, f"array {name} {v}, but {values.count(want)} other "
                                        f"row(s) of the column hold {want}; every array of a column has one "
                                        f"{name}"))
        if name == "shape":
            shape = want
        else:
            dtype = want
    return (None if problems else ColumnSpec("array", shape=shape, dtype=dtype)), problems


def _row_checks(rows: list[tuple[int, dict]], classes: list[str] | None, unit: str = "line") -> list[Problem]:
    """Per-row field checks and the checks across rows that need no files."""
    problems = []
    seen: dict[tuple, int] = {}
    pairs: dict[tuple[str, str], tuple[str, int]] = {}  # (teacher, student) -> (label, line) of its first row
    file_labels: dict[tuple[str, str], tuple[str, int]] = {}
    for line, row in rows:
        for col in COLUMNS:
            if col not in row:
                problems.append(Problem(line, col, "", "field is missing"))
        label = row.get("label", "")
        split = row.get("split", "")
        if "label" in row and not label and split in SPLITS[1:]:
            problems.append(Problem(line, "label", "", f"empty label in the {split!r} split; an unlabelled pair "
                                    "(empty label) may only be in the training split: val and test rows need a label"))
        elif label and classes is not None and label not in classes:
            problems.append(Problem(line, "label", "", f"unknown label {label!r}; known: {', '.join(classes)}"))
        if split and split not in SPLITS:
            problems.append(Problem(line, "split", "", f"split {split!r} is not one of {', '.join(SPLITS)}"))
        key = (row.get("teacher", ""), row.get("student", ""), label)
        if all(key[:2]) and key in seen:
            problems.append(Problem(line, "", "", f"duplicate of {unit} {seen[key]} (same teacher, student and "
                                    + ("label)" if label else "no label)")))
        seen.setdefault(key, line)
        if all(key[:2]):
            first_label, first_line = pairs.setdefault(key[:2], (label, line))
            if bool(first_label) != bool(label):
                problems.append(Problem(line, "label", "", f"the pair of {unit} {first_line} again, "
                                        + ("without its label" if first_label else f"now labelled {label!r}")
                                        + "; give each pair once"))
        for col in ("teacher", "student"):
            f = row.get(col, "")
            if not f or not label:
                continue
            first = file_labels.setdefault((col, f), (label, line))
            if first[0] != label:
                problems.append(Problem(line, col, f, f"labelled {label!r} here but {first[0]!r} on {unit} {first[1]}"))
    spelled: dict[str, tuple[str, int]] = {}  # label_key -> (first spelling, its line)
    for line, row in rows:
        label = row.get("label", "")
        if not label:
            continue
        first, first_line = spelled.setdefault(label_key(label), (label, line))
        if first != label:
            problems.append(Problem(line, "label", "", f"label {label!r} differs from {first!r} ({unit} {first_line}) "
                                    "only in case or spacing; write one spelling (they would be two classes)"))
    given = [line for line, r in rows if r.get("split")]
    blank = [line for line, r in rows if not r.get("split")]
    train_labels = {r.get("label", "") for _, r in rows if r.get("split") == "train"} - {""}
    if given and not blank and classes is None and train_labels:  # no labelled training row: require_labels
        for line, r in rows:
            if r.get("label") and r["label"] not in train_labels:
                problems.append(Problem(line, "label", "", f"label {r['label']!r} never appears in the training split"))
    if given and blank:
        problems.append(Problem(blank[0], "split", "", f"split is empty on {unit}s {_lines_text(blank)} but given on "
                                f"{len(given)} other row(s); fill it on every row or on none"))
    return problems


def _groups(rows: list[tuple[int, dict]]) -> np.ndarray:
    keys = [[f"{c}:{r.get(c, '')}" for c in ("teacher", "student") if r.get(c)]
            + ([f"group:{r['group']}"] if r.get("group") else []) for _, r in rows]
    return row_groups(keys)


def _split_checks(rows: list[tuple[int, dict]], labels: np.ndarray, class_names: list[str], fractions,
                  seed: int, unit: str = "line") -> tuple[np.ndarray | None, list[Problem]]:
    """The split of every row (given, or grouped and stratified) and what is wrong with it."""
    groups = _groups(rows)
    problems = []
    lines = np.array([line for line, _ in rows])
    given = all(r.get("split") in SPLITS for _, r in rows)
    if given:
        split = np.array([SPLITS.index(r["split"]) for _, r in rows], np.int8)
        for g in np.unique(groups):
            members = np.flatnonzero(groups == g)
            kinds = np.unique(split[members])
            if len(kinds) > 1:
                first = members[split[members] == split[members[0]]][0]
                other = members[split[members] != split[members[0]]][0]
                problems.append(Problem(int(lines[other]), "split", "", f"in {SPLITS[split[other]]!r} but shares a "
                                        f"file or group with {unit} {lines[first]} in {SPLITS[split[first]]!r}; "
                                        "rows sharing a file or group must be in one split"))
    else:
        split = grouped_split(labels, groups, fractions, np.random.default_rng(seed))
    for s, name in enumerate(SPLITS):
        if not (split == s).any():
            unl = int((labels < 0).sum())
            problems.append(Problem(1, "split", "", f"the {name} split is empty ({len(rows)} rows in "
                                    f"{len(np.unique(groups))} file group(s)"
                                    + (f"; {unl} unlabelled, which train only" if unl and s else "")
                                    + "); add rows or give a split column"))
    in_train = set(labels[split == 0].tolist())
    for c, name in enumerate(class_names):
        if c not in in_train and not given and in_train - {UNLABELLED}:  # given: _row_checks; none: require_labels
            first = int(lines[np.flatnonzero(labels == c)[0]])
            problems.append(Problem(first, "label", "", f"label {name!r} has no row in the training split "
                                    "(all its rows share files or groups that went to val/test)"))
    return split, problems


def check(path: Path, sample_rate: int = 16000, classes: list[str] | None = None, *,
          fractions=DEFAULT_FRACTIONS, seed: int = 0, max_file_mb: float = DEFAULT_MAX_FILE_MB,
          settings: Settings | None = None, columns: dict[str, str | None] | None = None) -> Checked:
    """Validate every row and file, and resolve each column's kind and sizes (``Checked.specs``) against
    ``settings`` (default: the files' own, at ``sample_rate``). ``path`` may be a Hugging Face datasets folder
    (``fdkd.pipeline.data.hf``), its columns mapped by ``columns`` (``data.manifest.columns``)."""
    path = Path(path)
    st = settings or Settings(sample_rate=sample_rate)
    folder, unit = None, "line"
    if hf.is_folder(path):
        folder, unit = hf.Folder.open(path, columns, st.kinds), "row"
        rows, found = folder.rows()
        problems = [Problem(*p) for p in found]
    elif columns:
        rows, problems = [], [Problem(0, "", "", "data.manifest.columns maps a Hugging Face datasets folder's "
                                      f"columns; {path} is a manifest, whose columns are named "
                                      f"{', '.join(COLUMNS)}: leave data.manifest.columns unset")]
    else:
        rows, problems = read_rows(path)
    if not rows and not problems:
        problems.append(Problem(1, "", "", f"{'folder' if folder else 'manifest'} has no rows"))
    root = path.parent
    problems += _row_checks(rows, classes, unit)
    want = dict(st.kinds or {})
    for col, kind in list(want.items()):  # no file of the column can be the configured kind: one problem, not one a row
        types = {Path(r[col]).suffix.lower() for _, r in rows if r.get(col) and kinds_of_file(r[col])}
        if types and not any(kind in EXTENSIONS[t] for t in types):
            setting = "teacher.modality and data.manifest.teacher_modality" if col == "teacher" else \
                "data.manifest.student_modality"
            problems.append(Problem(1, col, "", f"the {col} column holds {'/'.join(sorted(types))} files, not {kind}; "
                                    f"set {setting} to the column's kind "
                                    f"({'/'.join(sorted({k for t in types for k in EXTENSIONS[t]}))})"))
            want.pop(col)
    files: dict[str, list[tuple[int, str, FileInfo]]] = {"teacher": [], "student": []}
    for line, row in rows:
        for col in ("teacher", "student"):
            if col in row:
                info, found = _inspect(root, line, col, row[col], want.get(col), max_file_mb * 2**20,
                                       folder.read if folder else None)
                problems.extend(found)
                if info is not None:
                    files[col].append((line, row[col], info))
    specs, notes, warnings = {}, [], []
    for col, found in files.items():
        kinds = {}
        for line, _, info in found:
            kinds.setdefault(info.kind, line)
        if not want.get(col) and {"image", "depth"} == set(kinds):  # some 16-bit grey PNGs among images: images
            found = [(ln, rel, dataclasses.replace(i, kind="image", channels=1) if i.kind == "depth" else i)
                     for ln, rel, i in found]
            kinds.pop("depth")
        if len(kinds) > 1:
            problems.append(Problem(max(kinds.values()), col, "",
                                    f"column mixes modalities {sorted(kinds)}; one modality per column"))
            continue
        if found:  # the sizes of the files read agree (or are named); the others are problems already
            spec, found_problems = _column_spec(col, want.get(col) or next(iter(kinds)), found, st, notes, unit)
            if settings is None:  # `fdkd data manifest`: no config to set; the run will ask for it
                warnings += [f"{unit} {p.line}, {p.column}: {p.message}" for p in found_problems if p.needs]
                found_problems = [p for p in found_problems if not p.needs]
            problems.extend(found_problems)
            if spec is not None:
                specs[col] = spec
    out = Checked(rows, problems)
    out.specs, out.notes, out.warnings = specs, notes, warnings
    if rows and not any(p.column == "split" for p in problems):
        out.class_names = sorted({r["label"] for _, r in rows if r.get("label")})
        labels = np.array([out.class_names.index(r["label"]) if r.get("label") else UNLABELLED for _, r in rows],
                          np.int64)
        out.split, found = _split_checks(rows, labels, out.class_names, fractions, seed, unit)
        out.labels = labels
        problems.extend(found)
        train = labels[out.split == 0]
        if (train == UNLABELLED).all():
            out.warnings.append(f"{NO_TRAINING_LABEL} ({len(train)} unlabelled): the teacher cannot be "
                                "trained here, so `fdkd run` needs teacher.checkpoint (a trained teacher)")
        for c, name in enumerate(out.class_names):
            if not (out.split[labels == c] == 2).any():
                out.warnings.append(f"label {name!r} ({int((labels == c).sum())} row(s)) has no test row: "
                                    "its accuracy is never measured")
    if folder is not None:
        problems = [dataclasses.replace(p, unit=unit) for p in problems]
    out.problems = sorted(problems, key=lambda p: (p.line, p.column))
    return out


def check_manifest(path: Path, sample_rate: int = 16000, classes: list[str] | None = None,
                   **kwargs) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Validate every row and file; returns (rows, all problems). ``check`` also gives warnings and splits."""
    c = check(path, sample_rate, classes, **kwargs)
    return c.rows, c.problems


def build(mcfg, cache_dir: Path, student_modality: str | None = None) -> Path:
    """Validate the manifest and write it as a dataset (cached by content); returns its ``dataset.json``. Nothing
    is written on a problem: the check runs first, and a file that no longer decodes while the build streams the
    files' bytes into shards (each decoded once more, for the frontends' statistics, and dropped) leaves no dataset.

    ``student_modality``: the run's (``RunConfig.student_modality``); default ``mcfg.student_modality`` or the
    other of image and audio. The shards hold each file's bytes as they are (``fdkd.pipeline.data.store``)."""
    root = Path(mcfg.path).parent
    st = Settings.of(mcfg, student_modality)
    tm = mcfg.teacher_modality
    sm = student_modality or mcfg.student_modality or ("audio" if tm == "image" else "image")
    mapping = mcfg.columns.model_dump(exclude_none=True) if mcfg.columns is not None else None
    folder = hf.Folder.open(mcfg.path, mapping, st.kinds) if hf.is_folder(mcfg.path) else None
    unit = "row" if folder is not None else "line"
    if folder is not None:  # a Hugging Face datasets folder: its cells are read in place (hf.Folder.read)
        read, source, stamp = folder.read, "hf", folder.stamp()
    else:
        rows, _ = read_rows(mcfg.path)
        read, source = lambda rel: (root / rel).read_bytes(), artifacts.sha256_file(mcfg.path)
        stamp = [(f, (root / f).stat().st_size, (root / f).stat().st_mtime_ns)
                 for _, r in rows for f in (r.get("teacher", ""), r.get("student", "")) if f and (root / f).is_file()]
    key = artifacts.digest({"builder": BUILDER_VERSION, "manifest": source,
                            "cfg": mcfg.model_dump(mode="json"), "student": sm, "files": stamp})
    out = Path(cache_dir) / artifacts.DATASET.format(preset="manifest", digest=key)
    if exists(out):
        return record_path(out)
    c = check(mcfg.path, mcfg.sample_rate, fractions=mcfg.split_fractions, seed=mcfg.seed,
              max_file_mb=mcfg.max_file_mb, settings=st, columns=mapping)
    if c.problems:
        raise ManifestError(mcfg.path, c.problems)
    for w in c.warnings:
        if not w.startswith(NO_TRAINING_LABEL):  # fdkd.pipeline.data.require_labels decides, knowing the config
            log.warning("%s: %s", mcfg.path, w)
    for n in c.notes:
        log.warning("%s: %s", mcfg.path, n)
    columns = {modality: Column(c.specs[col], _ext(c.rows[0][1][col]), frontend(c.specs[col]))
               for col, modality in (("teacher", tm), ("student", sm))}
    meta = {"name": Path(mcfg.path).stem, "class_names": c.class_names, "build": {"manifest": str(mcfg.path)},
            "modalities": {"teacher": tm, "student": sm}}
    col_of = {tm: "teacher", sm: "student"}
    try:
        with StoreWriter(out, columns, meta) as w:
            for (line, row), label, split in zip(c.rows, c.labels, c.split, strict=True):
                files, exts = {}, {}
                for col, modality in (("teacher", tm), ("student", sm)):
                    try:  # check read every file already; one removed since is still named, by row
                        files[modality] = read(row[col])  # a file, or a datasets folder's cell (hf.Folder.read)
                    except (OSError, ValueError) as e:
                        raise ManifestError(mcfg.path, [Problem(line, col, row[col], "unreadable since the check: "
                                                                f"{getattr(e, 'strerror', None) or e}", unit=unit)]) \
                            from None
                    exts[modality] = _ext(row[col])
                w.add(int(label), int(split), files, sources={tm: row["teacher"], sm: row["student"]}, exts=exts)
            return w.close()
    except BadSample as e:  # a file changed since the check: named by its manifest line; nothing was kept
        line, row = c.rows[e.row]
        col = col_of[e.modality]
        raise ManifestError(mcfg.path, [Problem(line, col, row[col], f"unreadable since the check: {e.message}",
                                                unit=unit)]) from None


def _ext(rel: str) -> str:
    """A file's extension as its WebDataset member ends (``jpg``, ``png``, ``wav``, ``npy``)."""
    return Path(rel).suffix.lower().lstrip(".")
