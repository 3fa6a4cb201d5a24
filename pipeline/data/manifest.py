"""User paired data: validate a CSV/JSONL manifest and turn it into a dataset file.

A manifest has one row per pair with columns ``teacher`` (file of the teacher's modality),
``student`` (file of the student's modality), ``label`` (a class name) and optionally ``split``
(train/val/test, on every row or on none) and ``group`` (rows with one group value stay in one
split). Paths are relative to the manifest's folder. Files: WAV audio (PCM 8/16/24/32-bit or
float, any channel count: mixed to mono), PNG/JPEG images (any mode: ``fdkd.serving.image``).
CSV may carry a UTF-8 byte-order mark and CRLF line ends.

An empty ``label`` cell (JSONL: ``""`` or ``null``) marks an unlabelled pair: allowed in the training
split only (a val/test row needs its label; without a ``split`` column every unlabelled row, and every
row sharing a file or group with it, goes to train). Class names come from the labelled rows; the
dataset file holds -1 (``fdkd.pipeline.data.labels.UNLABELLED``) for an unlabelled row. The teacher trains
on the labelled training rows, so a manifest with none needs ``teacher.checkpoint`` (``require_labels``).

``check_manifest`` reads every row and every file and returns **all** problems at once, each
naming the row (the line in the file), the column and the path: missing, unreadable, empty or
oversized files, unsupported types, wrong sample rates, NaN/Inf samples, wrong JSON types,
unknown labels, empty labels outside the training split, duplicate rows (a pair given labelled and
unlabelled too), a file given two labels, a partly filled ``split`` column, rows sharing a file split
apart, splits left empty, classes with no labelled training row, and modality mixes within a column.
``build`` runs the same checks and writes nothing unless there is no problem.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fdkd import artifacts
from fdkd.pipeline.data.dataset import SPLITS, encode_meta
from fdkd.pipeline.data.labels import UNLABELLED
from fdkd.pipeline.data.splits import grouped_split, row_groups
from fdkd.serving.image import ImageError, decode_image
from fdkd.serving.preprocess import AudioFrontend, ImageFrontend
from fdkd.serving.wav import WavError, read_wav

log = logging.getLogger(__name__)
BUILDER_VERSION = 3  # 2: grouped splits, shared image decoder; 3: empty label cells are unlabelled (-1)
COLUMNS = ("teacher", "student", "label")
OPTIONAL = ("split", "group")
AUDIO_EXT = {".wav"}
IMAGE_EXT = {".png", ".jpg", ".jpeg"}
DEFAULT_MAX_FILE_MB = 64.0
FLOAT_WAV_LIMIT = 4.0  # float WAVs are [-1, 1]; a little overshoot is normal, thousands mean unscaled PCM values
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
NO_TRAINING_LABEL = "no training row is labelled"


class ManifestError(ValueError):
    """The manifest has problems; ``problems`` lists every one."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [f"{path}: {len(problems)} problem(s)"] + [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Problem:
    line: int  # line in the manifest file (header is line 1 for CSV)
    column: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", {self.column}" if self.column else "")
        return f"{where}: {self.message}" + (f" ({self.path})" if self.path else "")


@dataclass
class Checked:
    """What ``check`` found: rows, problems, and (with ``decode``) every row's decoded files and split."""

    rows: list[tuple[int, dict]]
    problems: list[Problem]
    values: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)  # (row index, column) -> array
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


def modality_of(path: str) -> str | None:
    ext = Path(path).suffix.lower()
    return "audio" if ext in AUDIO_EXT else "image" if ext in IMAGE_EXT else None


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
            return [], [Problem(1, c, "", "required column is missing from the header") for c in missing]
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


def _check_file(root: Path, line: int, column: str, rel: str, sample_rate: int, max_bytes: float,
                decode: tuple[AudioFrontend, ImageFrontend] | None) -> tuple[str | None, list[Problem], object]:
    if not rel:
        return None, [Problem(line, column, "", "no file given")], None
    path = root / rel
    kind = modality_of(rel)
    if kind is None:
        return None, [Problem(line, column, rel, "unsupported file type (want .wav, .png, .jpg, .jpeg)")], None
    if not path.is_file():
        return kind, [Problem(line, column, rel, "file not found")], None
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return kind, [Problem(line, column, rel, f"file is {size / 2**20:.1f} MB, over the "
                                  f"{max_bytes / 2**20:g} MB limit (data.manifest.max_file_mb)")], None
        raw = path.read_bytes()
    except OSError as e:
        return kind, [Problem(line, column, rel, f"unreadable: {e.strerror}")], None
    if not raw:
        return kind, [Problem(line, column, rel, "empty file")], None
    if kind == "audio":
        try:
            wav = read_wav(raw)
        except WavError as e:
            return kind, [Problem(line, column, rel, f"unreadable WAV: {e}")], None
        problems = []
        if wav.sample_rate != sample_rate:
            problems.append(Problem(line, column, rel, f"sample rate {wav.sample_rate} Hz, expected {sample_rate} "
                                    "(resample the file or set data.manifest.sample_rate)"))
        if wav.samples.size == 0:
            problems.append(Problem(line, column, rel, "WAV has no samples"))
        elif not np.isfinite(wav.samples).all():
            problems.append(Problem(line, column, rel, "WAV contains NaN or Inf samples"))
        elif wav.format.startswith("float") and np.abs(wav.samples).max() > FLOAT_WAV_LIMIT:
            problems.append(Problem(line, column, rel, f"float WAV samples reach {np.abs(wav.samples).max():.4g}; "
                                    "float WAVs hold samples in [-1, 1] (this one looks unscaled)"))
        value = decode[0].fit_clip(wav.mono()) if decode and not problems else None
        return kind, problems, value
    try:
        if decode:
            ife = decode[1]
            return kind, [], decode_image(raw, ife.channels, (ife.height, ife.width))
        decode_image(raw)
    except ImageError as e:
        return kind, [Problem(line, column, rel, str(e))], None
    return kind, [], None


def _row_checks(rows: list[tuple[int, dict]], classes: list[str] | None) -> list[Problem]:
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
            problems.append(Problem(line, "", "", f"duplicate of line {seen[key]} (same teacher, student and "
                                    + ("label)" if label else "no label)")))
        seen.setdefault(key, line)
        if all(key[:2]):
            first_label, first_line = pairs.setdefault(key[:2], (label, line))
            if bool(first_label) != bool(label):
                problems.append(Problem(line, "label", "", f"the pair of line {first_line} again, "
                                        + ("without its label" if first_label else f"now labelled {label!r}")
                                        + "; give each pair once"))
        for col in ("teacher", "student"):
            f = row.get(col, "")
            if not f or not label:
                continue
            first = file_labels.setdefault((col, f), (label, line))
            if first[0] != label:
                problems.append(Problem(line, col, f, f"labelled {label!r} here but {first[0]!r} on line {first[1]}"))
    given = [line for line, r in rows if r.get("split")]
    blank = [line for line, r in rows if not r.get("split")]
    train_labels = {r.get("label", "") for _, r in rows if r.get("split") == "train"} - {""}
    if given and not blank and classes is None and train_labels:  # no labelled training row: require_labels
        for line, r in rows:
            if r.get("label") and r["label"] not in train_labels:
                problems.append(Problem(line, "label", "", f"label {r['label']!r} never appears in the training split"))
    if given and blank:
        problems.append(Problem(blank[0], "split", "", f"split is empty on lines {_lines_text(blank)} but given on "
                                f"{len(given)} other row(s); fill it on every row or on none"))
    return problems


def _groups(rows: list[tuple[int, dict]]) -> np.ndarray:
    keys = [[f"{c}:{r.get(c, '')}" for c in ("teacher", "student") if r.get(c)]
            + ([f"group:{r['group']}"] if r.get("group") else []) for _, r in rows]
    return row_groups(keys)


def _split_checks(rows: list[tuple[int, dict]], labels: np.ndarray, class_names: list[str], fractions,
                  seed: int) -> tuple[np.ndarray | None, list[Problem]]:
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
                                        f"file or group with line {lines[first]} in {SPLITS[split[first]]!r}; "
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
          decode: tuple[AudioFrontend, ImageFrontend] | None = None) -> Checked:
    """Validate every row and file; with ``decode`` also keep the decoded arrays."""
    path = Path(path)
    rows, problems = read_rows(path)
    if not rows and not problems:
        problems.append(Problem(1, "", "", "manifest has no rows"))
    root = path.parent
    problems += _row_checks(rows, classes)
    kinds: dict[str, dict[str, int]] = {"teacher": {}, "student": {}}
    values = {}
    for i, (line, row) in enumerate(rows):
        for col in ("teacher", "student"):
            if col in row:
                kind, found, value = _check_file(root, line, col, row[col], sample_rate, max_file_mb * 2**20, decode)
                problems.extend(found)
                if kind:
                    kinds[col].setdefault(kind, line)
                if value is not None:
                    values[(i, col)] = value
    for col, seen in kinds.items():
        if len(seen) > 1:
            problems.append(Problem(max(seen.values()), col, "",
                                    f"column mixes modalities {sorted(seen)}; one modality per column"))
    if all(len(s) == 1 for s in kinds.values()) and kinds["teacher"].keys() == kinds["student"].keys():
        problems.append(Problem(1, "", "", "teacher and student columns hold the same modality; "
                                "fdkd pairs an image column with an audio column"))
    out = Checked(rows, problems, values)
    if rows and not any(p.column == "split" for p in problems):
        out.class_names = sorted({r["label"] for _, r in rows if r.get("label")})
        labels = np.array([out.class_names.index(r["label"]) if r.get("label") else UNLABELLED for _, r in rows],
                          np.int64)
        out.split, found = _split_checks(rows, labels, out.class_names, fractions, seed)
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
    out.problems = sorted(problems, key=lambda p: (p.line, p.column))
    return out


def check_manifest(path: Path, sample_rate: int = 16000, classes: list[str] | None = None,
                   **kwargs) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Validate every row and file; returns (rows, all problems). ``check`` also gives warnings and splits."""
    c = check(path, sample_rate, classes, **kwargs)
    return c.rows, c.problems


def build(mcfg, cache_dir: Path) -> Path:
    """Validate the manifest and write it as a dataset file (cached by content); nothing is written on a problem."""
    root = Path(mcfg.path).parent
    rows, _ = read_rows(mcfg.path)
    stamp = [(f, (root / f).stat().st_size, (root / f).stat().st_mtime_ns)
             for _, r in rows for f in (r.get("teacher", ""), r.get("student", "")) if f and (root / f).is_file()]
    key = artifacts.digest({"builder": BUILDER_VERSION, "manifest": artifacts.sha256_file(mcfg.path),
                            "cfg": mcfg.model_dump(mode="json"), "files": stamp})
    out = Path(cache_dir) / artifacts.DATASET.format(preset="manifest", digest=key)
    if out.exists():
        return out
    afe = AudioFrontend(sample_rate=mcfg.sample_rate, clip_samples=int(mcfg.sample_rate * mcfg.clip_seconds))
    h, w = mcfg.image_size
    ife = ImageFrontend(h, w, mcfg.image_channels, 255.0)
    c = check(mcfg.path, mcfg.sample_rate, fractions=mcfg.split_fractions, seed=mcfg.seed,
              max_file_mb=mcfg.max_file_mb, decode=(afe, ife))
    teacher_kind = modality_of(c.rows[0][1].get("teacher", "")) if c.rows else None
    if not c.problems and teacher_kind != mcfg.teacher_modality:
        c.problems.append(Problem(1, "teacher", "", f"the teacher column holds {teacher_kind} files but "
                                  f"data.manifest.teacher_modality is {mcfg.teacher_modality!r}"))
    if c.problems:
        raise ManifestError(mcfg.path, c.problems)
    for w in c.warnings:
        if not w.startswith(NO_TRAINING_LABEL):  # fdkd.pipeline.data.require_labels decides, knowing the config
            log.warning("%s: %s", mcfg.path, w)
    audio_col = "teacher" if teacher_kind == "audio" else "student"
    image_col = "student" if audio_col == "teacher" else "teacher"
    images = np.stack([c.values[(i, image_col)] for i in range(len(c.rows))])
    audio = np.stack([c.values[(i, audio_col)] for i in range(len(c.rows))]).astype(np.float32)
    labels = c.labels
    meta = {"name": Path(mcfg.path).stem, "class_names": c.class_names, "build": {"manifest": str(mcfg.path)},
            "frontends": {"image": ife.to_dict(), "audio": afe.to_dict()}}
    artifacts.save_npz(out, {"image_raw": images, "audio_raw": audio, "label": labels, "split": c.split,
                             "meta": encode_meta(meta)})
    return out
