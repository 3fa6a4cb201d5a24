"""Replace the generated part of a markdown file: the text between its begin and end markers.

docs/results.md's tables are written by the bench generators (bench.science.v2_tables, bench.science.v3_tables,
bench.serve.results, bench.compress.results, bench.train.epoch_time, bench.train.memory_format, bench.accents.run,
bench.gpu.check), each between its own pair of HTML-comment markers; everything outside them is left alone.
"""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, begin: str, end: str, body: str) -> None:
    """``begin`` + ``body`` + ``end`` in place of the marked part of ``path``; a file without both markers is
    refused (SystemExit naming the file) and left as it was."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} markers to replace")
    head, rest = text.split(begin, 1)
    path.write_text(f"{head}{begin}{body}{end}{rest.split(end, 1)[1]}")
