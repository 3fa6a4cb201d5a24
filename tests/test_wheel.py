"""The built wheel installs one import name, ``fdkd``, and every package of the checkout is in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"fdkd": "fdkd", "fdkd.pipeline": "pipeline", "fdkd.calibration": "calibration", "fdkd.serving": "serving"}


def checkout_packages() -> set[str]:
    """Every folder with an __init__.py under the four installed folders, as an fdkd.* package name."""
    out = {"fdkd"}
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            if "__pycache__" not in rel and (name != "fdkd" or not rel):
                out.add(".".join((name, *rel)))
    return out


def test_pyproject_lists_every_package_and_maps_the_folders():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(tool["packages"]) == checkout_packages()
    assert tool["package-dir"] == FOLDERS


@pytest.mark.slow
def test_wheel_has_only_fdkd_at_the_top(tmp_path):
    src = tmp_path / "src"  # a copy: setuptools' build/ folder in a checkout can hold files deleted since
    for folder in FOLDERS.values():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = tmp_path.glob("fdkd-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = next(t for t in tops if t.endswith(".dist-info"))
    assert tops == {"fdkd", dist_info}
    top_level = zipfile.ZipFile(whl).read(f"{dist_info}/top_level.txt").decode().split()
    assert top_level == ["fdkd"]
    # the code, the package data and the entry point, all under fdkd/
    for want in ("fdkd/__init__.py", "fdkd/artifacts.py", "fdkd/pipeline/cli.py", "fdkd/pipeline/configs/avdigits.yaml",
                 "fdkd/calibration/quantize.py", "fdkd/serving/inference.py", "fdkd/serving/static/index.html",
                 "fdkd/serving/runtime/onnx.py"):
        assert want in names, want
    assert {".".join(n.split("/")[:-1]) for n in names if n.endswith("/__init__.py")} == checkout_packages()
    entry = zipfile.ZipFile(whl).read(f"{dist_info}/entry_points.txt").decode()
    assert "fdkd = fdkd.pipeline.cli:app" in entry


def test_installed_fdkd_does_not_add_checkout_to_path(tmp_path):
    """Installed (a wheel's layout: the stages inside fdkd/), ``fdkd`` leaves its own path alone; in a checkout
    it adds the root, so ``fdkd.pipeline`` is the checkout's pipeline/."""
    import fdkd

    assert Path(fdkd.__path__[-1]) == ROOT and (ROOT / "pipeline" / "__init__.py").is_file()
    pkg = tmp_path / "site" / "fdkd"
    (pkg / "pipeline").mkdir(parents=True)
    (pkg / "__init__.py").write_text((ROOT / "fdkd" / "__init__.py").read_text())
    (pkg / "pipeline" / "__init__.py").write_text("WHERE = 'site'\n")
    out = subprocess.run([sys.executable, "-c", "import fdkd, fdkd.pipeline; print(len(fdkd.__path__), "
                          "fdkd.pipeline.WHERE)"], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")},
                         capture_output=True, text=True)
    assert out.stdout.split() == ["1", "site"], out.stderr
