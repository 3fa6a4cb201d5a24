"""Write docker/constraints-cpu.txt: the installed versions (what CI tests) of every package ``pip install
'.[serve]'`` pulls in: the core dependencies and the ``serve`` extra, and their dependencies, transitively
(environment markers evaluated here: Linux, the CI's Python, as in the CPU image). ``pip freeze`` filtered to
that closure. Run it with the CI's interpreter after changing pyproject.toml or the environment:

    python docker/freeze_constraints.py > docker/constraints-cpu.txt

tests/test_containers.py checks that the file pins every package of the closure at the installed version.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))


def serve_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["serve"]]


def closure(roots: list[Requirement]) -> dict[str, str]:
    """canonical name -> installed version, for ``roots`` and everything they require (with the extras asked)."""
    seen: dict[str, str] = {}
    todo = [(r, set(r.extras)) for r in roots if _wanted(r, set())]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        dist = metadata.distribution(req.name)  # PackageNotFoundError: the environment lacks a serve dependency
        first = name not in seen
        seen[name] = dist.version
        if not first and not extras:
            continue
        for dep in map(Requirement, dist.requires or []):
            if _wanted(dep, extras):
                dep_name = canonicalize_name(dep.name)
                if dep_name not in seen or dep.extras:
                    todo.append((dep, set(dep.extras)))
    return seen


def main() -> int:
    pins = closure(serve_requirements())
    head = (f"# pip constraints for the CPU image (docker/Dockerfile.cpu): the versions CI tests, written by\n"
            f"# `python docker/freeze_constraints.py` (Python {sys.version_info.major}.{sys.version_info.minor}): "
            "core + [serve], transitively.\n")
    sys.stdout.write(head + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
    return 0


def read_pins(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line):
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


if __name__ == "__main__":
    sys.exit(main())
