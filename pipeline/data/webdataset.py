"""A WebDataset shard set (``.tar`` files whose members sharing a key form one sample) -> files and a manifest.

``fdkd data webdataset shard-*.tar --out pairs/ --teacher jpg --student wav --label cls`` unpacks each sample's
mapped members (``<key>.jpg``, ``<key>.wav``; ``<key>.cls`` holds the class name as text) into ``pairs/`` and
writes ``pairs/manifest.csv`` with one row per sample, in shard order; the manifest check and build then apply as
to any manifest. The column mapping names each member by its extension (what follows the key's first dot).
An optional ``--split`` member (text: train/val/test) fills the split column.

Every problem of every shard is reported at once, naming the shard and the sample key: a missing or unreadable
shard, a truncated tar, a sample without a mapped member, a key given twice or not a relative path (``../x``),
an empty or non-UTF-8 label. The
output is written into a temporary folder beside ``--out`` and renamed into place only when everything was read,
so a failed or killed unpack leaves no half-filled folder a run could use; an existing ``--out`` is never
overwritten.

This copies the samples out of the tars (the dataset format today is files plus a manifest); the streaming
on-disk dataset will read shard sets in place.
"""

from __future__ import annotations

import csv
import io
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath


class ShardError(ValueError):
    """The shard set cannot be unpacked; ``problems`` lists every one (shard, key, what)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in the shard set:\n" + "\n".join(f"  {p}" for p in problems))


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the member's path up to the first dot of its file name; the rest the ext."""
    path = PurePosixPath(name)
    stem, _, ext = path.name.partition(".")
    return str(path.parent / stem) if str(path.parent) != "." else stem, ext


def _samples(shard: Path, problems: list[str]) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) of every sample in one shard, in order; problems appended, naming the shard."""
    out: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(shard, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} truncated ({len(data)} of {member.size} bytes)")
                out.setdefault(key, {})[ext] = data
    except FileNotFoundError:
        problems.append(f"{shard}: shard not found")
        return []
    except (tarfile.TarError, OSError, EOFError) as e:
        problems.append(f"{shard}: unreadable or truncated tar ({type(e).__name__}: {e})")
        return []
    return list(out.items())


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def unpack(shards: list[Path], out: Path, teacher: str, student: str, label: str = "cls",
           split: str | None = None) -> Path:
    """Unpack the mapped members of every sample into ``out`` and write ``out/manifest.csv``; returns its path.
    Raises :class:`ShardError` (nothing written) on any problem, ``FileExistsError`` if ``out`` exists."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; unpack into a new folder (nothing is overwritten)")
    problems: list[str] = []
    rows, seen = [], {}
    members = {"teacher": teacher, "student": student, "label": label, **({"split": split} if split else {})}
    for shard in shards:
        for key, files in _samples(Path(shard), problems):
            where = f"{shard}: sample {key!r}"
            if key in seen:
                problems.append(f"{where}: key also in {seen[key]} (a key names one sample in the whole set)")
                continue
            seen[key] = shard
            parts = PurePosixPath(key).parts
            if PurePosixPath(key).is_absolute() or ".." in parts or not parts:
                problems.append(f"{where}: the key is not a relative path inside the output folder")
                continue
            missing = [f"{col} member '{ext}'" for col, ext in members.items() if ext not in files]
            if missing:
                problems.append(f"{where}: no {', '.join(missing)} (it has {', '.join(sorted(files)) or 'nothing'})")
                continue
            text = {c: _text(files[members[c]]) for c in ("label", "split") if c in members}
            bad = [c for c, v in text.items() if not v]
            if bad:
                problems.append(f"{where}: {' and '.join(bad)} member empty or not UTF-8 text")
                continue
            rows.append((key, files, text))
    if problems:
        raise ShardError(problems)
    if not rows:
        raise ShardError([f"{', '.join(map(str, shards)) or 'no shards given'}: no samples"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        lines = io.StringIO()
        w = csv.writer(lines, lineterminator="\n")
        w.writerow(["teacher", "student", "label"] + (["split"] if split else []))
        for key, files, text in rows:
            names = []
            for ext in (teacher, student):
                rel = Path(*PurePosixPath(f"{key}.{ext}").parts)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(files[ext])
                names.append(rel.as_posix())
            w.writerow(names + [text["label"]] + ([text["split"]] if split else []))
        (tmp / "manifest.csv").write_text(lines.getvalue())
        tmp.rename(out)  # one step: the folder appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "manifest.csv"
