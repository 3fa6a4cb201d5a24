"""Write the generated part of a results document: the text between its begin and end markers, wrapped.

The tables of ``docs/results/*.md`` are written by the bench generators (``bench.science.v2_tables``,
``bench.science.v3_tables``, ``bench.serve.results``, ``bench.compress.results``, ``bench.train.epoch_time``,
``bench.train.memory_format``, ``bench.accents.run``, ``bench.gpu.check``), each between its own pair of
HTML-comment markers; everything outside them is left alone. Prose lines are wrapped at ``WIDTH`` characters
(``wrap_markdown``); table rows (lines starting with ``|``), headings, images and fenced blocks are kept whole.
"""

from __future__ import annotations

import re
from pathlib import Path

WIDTH = 120
# a line that markdown would read as something else than the paragraph it continues
_RISKY = re.compile(r"^([-*+>#|=]|\d+[.)]$|```|~~~)")
_PREFIX = re.compile(r"^(\s*(?:[-*+] |\d+[.)] |> )?)(.*)$")


def _wrap_line(line: str, width: int) -> list[str]:
    hard_break = line.endswith("  ")
    prefix, content = _PREFIX.match(line.rstrip()).groups()
    rest = "> " if prefix.strip() == ">" else " " * len(prefix)
    words = content.split()
    lines: list[list[str]] = [[]]
    for word in words:
        cur = lines[-1]
        room = width - len(prefix if len(lines) == 1 else rest)
        if cur and len(" ".join([*cur, word])) > room:
            # never start a continuation with a list marker, heading, quote, table pipe or fence
            carry = [cur.pop(), word] if _RISKY.match(word) and len(cur) > 1 else [word]
            lines.append(carry)
        else:
            cur.append(word)
    out = [(prefix if i == 0 else rest) + " ".join(ws) for i, ws in enumerate(lines)]
    if hard_break:
        out[-1] += "  "
    return out


def wrap_markdown(text: str, width: int = WIDTH) -> str:
    """``text`` with every prose line longer than ``width`` wrapped at spaces (a word longer than the line stays
    whole); table rows, headings, images, HTML comments and fenced blocks are left as they are."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if fenced or len(line) <= width or line.lstrip().startswith(("|", "#", "![", "<!--", "```", "~~~")):
            out.append(line)
        else:
            out += _wrap_line(line, width)
    return "\n".join(out)


def write_section(path: Path, begin: str, end: str, body: str) -> None:
    """``begin`` + ``body`` (wrapped: ``wrap_markdown``) + ``end`` in place of the marked part of ``path``; a file
    without both markers is refused (SystemExit naming the file) and left as it was."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} markers to replace")
    head, rest = text.split(begin, 1)
    path.write_text(f"{head}{begin}{wrap_markdown(body)}{end}{rest.split(end, 1)[1]}")


def append_records(path: Path, records: list[dict]) -> None:
    """Append ``records`` to the JSONL file ``path`` (made with its folder if new), one JSON object a line."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
