"""The import graph of the installed code (fdkd/, pipeline/, serving/, calibration/): layers and no cycles.

Read from the source with ``ast`` (every import, the lazy ones inside functions included), so a cycle that only
closes at run time is caught too. The layers, bottom up: ``fdkd.serving`` (the ground floor: the serving image
has no torch, pipeline or calibration) and ``fdkd``'s own modules (what the stages share), then
``fdkd.calibration``, then ``fdkd.pipeline``. A module may import only from its own layer or below.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"fdkd": ROOT / "fdkd", "fdkd.pipeline": ROOT / "pipeline", "fdkd.calibration": ROOT / "calibration",
           "fdkd.serving": ROOT / "serving"}
# what each part may import, besides itself
MAY_IMPORT = {
    "fdkd.serving": set(),
    "fdkd": set(),
    "fdkd.calibration": {"fdkd"},
    "fdkd.pipeline": {"fdkd", "fdkd.calibration", "fdkd.serving"},
}


def modules() -> dict[str, Path]:
    out = {}
    for prefix, folder in FOLDERS.items():
        for p in sorted(folder.rglob("*.py")):
            rel = p.relative_to(folder).with_suffix("").parts
            if prefix == "fdkd" and len(rel) > 1:
                continue
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            out[".".join((prefix, *parts))] = p
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The fdkd modules ``path`` imports (``from a import b`` counts as a.b where that is a module)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "fdkd" or t.startswith("fdkd."))
    return found - {name}


def part(mod: str) -> str:
    if mod == "fdkd.__main__":
        return "fdkd.pipeline"  # ``python -m fdkd``: the CLI, which lives in the top layer
    for prefix in ("fdkd.pipeline", "fdkd.calibration", "fdkd.serving"):
        if mod == prefix or mod.startswith(prefix + "."):
            return prefix
    return "fdkd"


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_import_resolves_to_a_module_of_the_package():
    g, known = graph(), set(modules())
    bad = {m: sorted(t for t in ts if t not in known) for m, ts in g.items()}
    assert not {m: ts for m, ts in bad.items() if ts}


def test_layers_point_down_only():
    wrong = [f"{m} imports {t}" for m, ts in graph().items() for t in sorted(ts)
             if part(t) != part(m) and part(t) not in MAY_IMPORT[part(m)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    g = graph()
    # Tarjan's strongly connected components; any with more than one module is a cycle
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_checker_sees_a_cycle_and_a_back_arrow(tmp_path, monkeypatch):
    """The checks above can fail: a planted serving -> pipeline import and a two-module circle are found."""
    pkg = tmp_path / "serving"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from fdkd.serving import b\nfrom fdkd.pipeline import cli\n")
    (pkg / "b.py").write_text("def f():\n    from fdkd.serving import a\n")
    monkeypatch.setitem(FOLDERS, "fdkd.serving", pkg)
    g = graph()
    assert g["fdkd.serving.a"] >= {"fdkd.serving.b", "fdkd.pipeline.cli"} and g["fdkd.serving.b"] == {"fdkd.serving.a"}
    try:
        test_no_import_cycle()
    except AssertionError as e:
        assert "fdkd.serving.a" in str(e) and "fdkd.serving.b" in str(e)
    else:
        raise AssertionError("the cycle went unseen")
    try:
        test_layers_point_down_only()
    except AssertionError as e:
        assert "fdkd.serving.a imports fdkd.pipeline.cli" in str(e)
    else:
        raise AssertionError("the back-arrow went unseen")


def test_no_bare_stage_import_anywhere():
    """Nothing (tests and bench included) imports the old top-level names: only ``fdkd`` is installed."""
    offenders = []
    tracked = [d for d in ROOT.iterdir()
               if d.is_dir() and not d.name.startswith(".") and d.name not in {"runs", "build"}]
    for p in sorted(p for d in tracked for p in d.rglob("*.py") if "site-packages" not in p.parts):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module
                     else [])
            offenders += [f"{p.relative_to(ROOT)}: {n}" for n in names
                          if n.split(".")[0] in {"pipeline", "serving", "calibration"}]
    assert not offenders, offenders


def _named_packages(path: Path) -> list[str]:
    """String arguments naming a package to a look-up by name (``resources.files("x")``, ``import_module("x")``,
    ``find_spec("x")``, ``__import__("x")``): those escape the import checks above."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if fn in {"files", "import_module", "find_spec", "__import__", "as_file", "read_text", "read_binary"}:
                out.append(node.args[0].value)
    return out


def test_packages_looked_up_by_name_are_fdkd_ones(tmp_path, monkeypatch):
    """``resources.files("serving")`` worked from the checkout's root and answered 500 installed (issue 32): every
    package named in a string is an ``fdkd.*`` one. A planted one is found."""
    def offenders():
        return [f"{m}: {n!r}" for m, p in modules().items() for n in _named_packages(p)
                if n.split(".")[0] in {"pipeline", "serving", "calibration", "tests", "bench"}]

    assert not offenders(), offenders()
    pkg = tmp_path / "serving"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "planted.py").write_text("from importlib import resources\nX = resources.files('serving')\n")
    monkeypatch.setitem(FOLDERS, "fdkd.serving", pkg)
    assert offenders() == ["fdkd.serving.planted: 'serving'"]
