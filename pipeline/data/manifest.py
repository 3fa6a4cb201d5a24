"""User paired data: validate a CSV/JSONL manifest and turn it into a dataset file.

A manifest has one row per pair with columns ``teacher`` (file of the teacher's modality),
``student`` (file of the student's modality), ``label`` and optionally ``split``
(train/val/test). Paths are relative to the manifest's folder. Files: WAV audio, PNG/JPEG images.

``check_manifest`` reads every row and every file and returns **all** problems at once, each
naming the row (the line in the file), the column and the path: missing or unreadable files,
empty files, unsupported types, wrong sample rates, NaN/Inf samples, unknown labels and splits,
and modality mixes within a column.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import artifacts
from pipeline.data.dataset import SPLITS, encode_meta, stratified_split
from serving.preprocess import AudioFrontend, ImageFrontend
from serving.wav import WavError, read_wav

COLUMNS = ("teacher", "student", "label")
AUDIO_EXT = {".wav"}
IMAGE_EXT = {".png", ".jpg", ".jpeg"}


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


def modality_of(path: str) -> str | None:
    ext = Path(path).suffix.lower()
    return "audio" if ext in AUDIO_EXT else "image" if ext in IMAGE_EXT else None


def read_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Rows as (line number, fields); JSONL lines that are not JSON objects become problems."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    rows, problems = [], []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
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
            rows.append((i, {k: "" if v is None else str(v) for k, v in obj.items()}))
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            return [], [Problem(1, c, "", "required column is missing from the header") for c in missing]
        for i, row in enumerate(reader, start=2):
            rows.append((i, {k: (v or "").strip() for k, v in row.items() if k is not None}))
    else:
        raise ValueError(f"manifest {path} must be .csv or .jsonl")
    return rows, problems


def _check_file(root: Path, line: int, column: str, rel: str, sample_rate: int) -> tuple[str | None, list[Problem]]:
    if not rel:
        return None, [Problem(line, column, "", "no file given")]
    path = root / rel
    kind = modality_of(rel)
    if kind is None:
        return None, [Problem(line, column, rel, "unsupported file type (want .wav, .png, .jpg, .jpeg)")]
    if not path.is_file():
        return kind, [Problem(line, column, rel, "file not found")]
    try:
        raw = path.read_bytes()
    except OSError as e:
        return kind, [Problem(line, column, rel, f"unreadable: {e.strerror}")]
    if not raw:
        return kind, [Problem(line, column, rel, "empty file")]
    problems = []
    if kind == "audio":
        try:
            wav = read_wav(raw)
        except WavError as e:
            return kind, [Problem(line, column, rel, f"unreadable WAV: {e}")]
        if wav.sample_rate != sample_rate:
            problems.append(Problem(line, column, rel, f"sample rate {wav.sample_rate} Hz, expected {sample_rate}"))
        if wav.samples.size == 0:
            problems.append(Problem(line, column, rel, "WAV has no samples"))
        elif not np.isfinite(wav.samples).all():
            problems.append(Problem(line, column, rel, "WAV contains NaN or Inf samples"))
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                if im.width == 0 or im.height == 0:
                    problems.append(Problem(line, column, rel, "image has zero size"))
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            problems.append(Problem(line, column, rel, f"unreadable image: {e}"))
    return kind, problems


def check_manifest(path: Path, sample_rate: int = 16000,
                   classes: list[str] | None = None) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Validate every row and file; returns (rows, all problems)."""
    path = Path(path)
    rows, problems = read_rows(path)
    if not rows and not problems:
        problems.append(Problem(1, "", "", "manifest has no rows"))
    root = path.parent
    kinds: dict[str, dict[str, int]] = {"teacher": {}, "student": {}}
    train_labels = {r["label"] for _, r in rows if r.get("split", "") in ("", "train")}
    for line, row in rows:
        for col in COLUMNS:
            if col not in row:
                problems.append(Problem(line, col, "", "field is missing"))
        label = row.get("label", "")
        if "label" in row and not label:
            problems.append(Problem(line, "label", "", "empty label"))
        elif label and classes is not None and label not in classes:
            problems.append(Problem(line, "label", "", f"unknown label {label!r}; known: {', '.join(classes)}"))
        elif label and classes is None and label not in train_labels:
            problems.append(Problem(line, "label", "", f"label {label!r} never appears in the training split"))
        split = row.get("split", "")
        if split and split not in SPLITS:
            problems.append(Problem(line, "split", "", f"split {split!r} is not one of {', '.join(SPLITS)}"))
        for col in ("teacher", "student"):
            if col in row:
                kind, found = _check_file(root, line, col, row[col], sample_rate)
                problems.extend(found)
                if kind:
                    kinds[col].setdefault(kind, line)
    for col, seen in kinds.items():
        if len(seen) > 1:
            problems.append(Problem(max(seen.values()), col, "",
                                    f"column mixes modalities {sorted(seen)}; one modality per column"))
    if all(len(s) == 1 for s in kinds.values()) and kinds["teacher"].keys() == kinds["student"].keys():
        problems.append(Problem(1, "", "", "teacher and student columns hold the same modality; "
                                "fdkd pairs an image column with an audio column"))
    return rows, sorted(problems, key=lambda p: (p.line, p.column))


def build(mcfg, cache_dir: Path) -> Path:
    """Validate the manifest and write it as a dataset file (cached by content)."""
    from PIL import Image

    rows, problems = check_manifest(mcfg.path, mcfg.sample_rate)
    if problems:
        raise ManifestError(mcfg.path, problems)
    root = Path(mcfg.path).parent
    stamp = [(f, (root / f).stat().st_size, (root / f).stat().st_mtime_ns)
             for _, r in rows for f in (r["teacher"], r["student"])]
    key = artifacts.digest({"manifest": artifacts.sha256_file(mcfg.path), "cfg": mcfg.model_dump(mode="json"),
                            "files": stamp})
    out = Path(cache_dir) / artifacts.DATASET.format(preset="manifest", digest=key)
    if out.exists():
        return out
    audio_col = "teacher" if modality_of(rows[0][1]["teacher"]) == "audio" else "student"
    image_col = "student" if audio_col == "teacher" else "teacher"
    afe = AudioFrontend(sample_rate=mcfg.sample_rate, clip_samples=int(mcfg.sample_rate * mcfg.clip_seconds))
    h, w = mcfg.image_size
    ife = ImageFrontend(h, w, mcfg.image_channels, 255.0)
    images, audio = [], []
    for _, r in rows:
        with Image.open(root / r[image_col]) as im:
            im = im.convert("L" if mcfg.image_channels == 1 else "RGB").resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, np.uint8)
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
        audio.append(afe.fit_clip(read_wav((root / r[audio_col]).read_bytes()).mono()))
    class_names = sorted({r["label"] for _, r in rows})
    labels = np.array([class_names.index(r["label"]) for _, r in rows], np.int64)
    if all(r.get("split") for _, r in rows):
        split = np.array([SPLITS.index(r["split"]) for _, r in rows], np.int8)
    else:
        split = stratified_split(labels, mcfg.split_fractions, np.random.default_rng(mcfg.seed))
    meta = {"name": Path(mcfg.path).stem, "class_names": class_names, "build": {"manifest": str(mcfg.path)},
            "frontends": {"image": ife.to_dict(), "audio": afe.to_dict()}}
    artifacts.save_npz(out, {"image_raw": np.stack(images), "audio_raw": np.stack(audio).astype(np.float32),
                             "label": labels, "split": split, "meta": encode_meta(meta)})
    return out
