"""docs/results.md and its generated tables (docs/results/*.md): readable widths, links that land, one writer each."""

import re
from pathlib import Path

import pytest

from bench.common import WIDTH, wrap_markdown

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "docs" / "results.md"
TABLES = sorted((ROOT / "docs" / "results").glob("*.md"))
RECORDS_README = ROOT / "docs" / "records" / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)|^\[[^\]]+\]:\s*(\S+)$", re.M)


def slugs(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return out


def prose_lines(text: str):
    """(number, line) of every line that is not a table row or inside a fenced block (verbatim program output)."""
    fenced = False
    for n, line in enumerate(text.split("\n"), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced and not line.startswith("|"):
            yield n, line


@pytest.mark.parametrize("path", [MAIN, *TABLES, RECORDS_README], ids=lambda p: p.name)
def test_no_prose_line_past_the_width(path):
    long = [(n, len(line)) for n, line in prose_lines(path.read_text()) if len(line) > WIDTH]
    assert not long, f"{path.name}: lines past {WIDTH} characters (line, length): {long}"


@pytest.mark.parametrize("path", [MAIN, *TABLES, RECORDS_README], ids=lambda p: p.name)
def test_every_link_lands(path):
    text = path.read_text()
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path.name} links to {target}: no such file"
        if anchor:
            assert anchor in slugs(dest.read_text()), f"{path.name} links to {target}: no such heading"


def test_results_md_opens_with_findings_then_contents_and_reaches_every_table_file():
    text = MAIN.read_text()
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections[:2] == ["Findings", "Contents"]
    findings = [line for line in text.split("## Findings", 1)[1].split("## Contents", 1)[0].split("\n") if line]
    assert len(findings) <= 15
    assert all(re.match(r"- \[[^\]]+\]\[\w+\] ", line) for line in findings[1:]), "each finding links its section"
    for table in TABLES:
        assert f"](results/{table.name})" in text, f"results.md does not link {table.name}"


VERDICT = re.compile(r"\b(met|not met|undecided|shown|not shown|not separated|not supported)\b")


def findings_lines(text: str) -> list[str]:
    """The bullets of results.md's Findings."""
    block = text.split("## Findings", 1)[1].split("## Contents", 1)[0]
    return [line for line in block.split("\n") if line.startswith("- ")]


def test_every_finding_carries_a_verdict_word_and_a_link_that_resolves():
    text = MAIN.read_text()
    refs = dict(re.findall(r"^\[(\w+)\]:\s*(\S+)$", text, re.M))
    lines = findings_lines(text)
    assert lines
    for line in lines:
        link = re.match(r"- \[[^\]]+\]\[(\w+)\] ", line)
        assert link and link.group(1) in refs, f"finding without a link to a section: {line!r}"
        assert refs[link.group(1)].lstrip("#") in slugs(text), f"finding links a missing heading: {line!r}"
        assert VERDICT.search(line), f"finding without a verdict word ({VERDICT.pattern}): {line!r}"


def test_the_findings_check_refuses_a_line_without_a_verdict_or_a_link():
    bare = "## Findings\n\n- [1v3][s1v3] kd transfers the pair's knowledge.\n## Contents\n"
    unlinked = "## Findings\n\n- kd is +24.7 over its shuffled teacher (shown).\n## Contents\n"
    (line,) = findings_lines(bare)
    assert not VERDICT.search(line)
    (line,) = findings_lines(unlinked)
    assert not re.match(r"- \[[^\]]+\]\[(\w+)\] ", line)


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.name)
def test_each_table_file_has_generated_sections_and_names_its_generator(path):
    """One or more generated sections (compress.md has the 100k-parameter student's and the real students'), each
    opened and closed exactly once."""
    text = path.read_text()
    begins = re.findall(r"<!-- ([\w-]+):begin", text)
    assert begins and len(set(begins)) == len(begins), path.name
    assert all(text.count(f"<!-- {b}:end -->") == 1 for b in begins), path.name
    assert "python" in text.split("<!--", 1)[0] and "docs/records/" in text.split("<!--", 1)[0]


def test_results_md_has_no_generated_section_left():
    assert ":begin" not in MAIN.read_text()


def test_wrap_keeps_tables_fences_and_markdown_structure():
    para = "word " * 40 + "- not a list " + "x " * 60
    table = "| " + " | ".join(["cell"] * 60) + " |"
    fence = "```\n" + "y" * 200 + "\n```"
    out = wrap_markdown("\n".join([para.strip(), table, fence, "- " + "item " * 40 + "  "]), 50)
    lines = out.split("\n")
    assert table in lines and "y" * 200 in lines
    assert all(len(line) <= 50 for line in lines if not line.startswith("|") and line != "y" * 200)
    assert not any(line.startswith("- not") for line in lines)  # never a list by accident
    items = lines[lines.index("```", lines.index("```") + 1) + 1:]
    assert items[0].startswith("- item") and all(line.startswith("  item") for line in items[1:])
    assert items[-1].endswith("  ")  # a hard line break stays one
    assert " ".join(out.split()) == " ".join("\n".join([para, table, fence, "- " + "item " * 40]).split())
