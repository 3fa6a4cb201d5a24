"""What an installed user gets: the CPU image's install (``pip install -c docker/constraints-cpu.txt '.[serve]'``,
the line docker/Dockerfile.cpu runs) into a venv of its own, used from a folder outside the checkout.

pytest runs from the checkout's root, where ``serving``, ``pipeline`` and ``calibration`` import as top-level
packages; an installed user has only ``fdkd``. Every check here runs the venv's own interpreter or console script
with the working directory in a temporary folder and ``PYTHONSAFEPATH`` set, so nothing of the checkout can be
imported by accident (the page's 500 of issue 32 hid exactly there). The same install is the check of the pins:
docker/constraints-cpu.txt must be what ``docker/freeze_constraints.py`` writes in it, so no test depends on what a
registry released after the last commit (the test venv's own versions do not matter here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving_helpers import start_server_process
from tests.test_page import _test_clip, browser, page  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("fdkd", "pipeline", "serving", "calibration")
BODY = {"inputs": [{"name": "input", "shape": [1, 1, 40, 101], "datatype": "FP32", "data": [0.1] * 4040}]}


def _outside_env(**extra: str) -> dict[str, str]:
    """Our environment without anything that points back into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PYTHONSAFEPATH": "1", **extra}


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory) -> Path:
    """A fresh venv with what docker/Dockerfile.cpu installs, from a copy of the sources (a checkout's setuptools
    build/ folder can hold files deleted since)."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    for folder in SOURCES:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    (src / "docker").mkdir()
    shutil.copy(ROOT / "docker/constraints-cpu.txt", src / "docker/constraints-cpu.txt")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # the Dockerfile's RUN line, verbatim but for the pip of this venv
    (run,) = [line for line in (ROOT / "docker/Dockerfile.cpu").read_text().splitlines() if "pip install" in line]
    assert 'pip install -c docker/constraints-cpu.txt ".[serve]"' in run
    assert "COPY docker/constraints-cpu.txt ./docker/" in (ROOT / "docker/Dockerfile.cpu").read_text()
    proc = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "-c", "docker/constraints-cpu.txt", ".[serve]"], cwd=src, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shutil.rmtree(src)  # the install must not need its source tree
    return venv


def _py(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin/python"), "-c", code], cwd=cwd, env=_outside_env(), capture_output=True,
                          text=True, timeout=120)


def _pins(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


@pytest.mark.slow
def test_constraints_are_what_the_image_installs(image_venv, tmp_path):
    """docker/constraints-cpu.txt pins every package of core + [serve], transitively, at the version the image's own
    install resolves to: rewriting it with docker/freeze_constraints.py inside that install changes no pin."""
    proc = subprocess.run([str(image_venv / "bin/python"), str(ROOT / "docker/freeze_constraints.py")], cwd=tmp_path,
                          env=_outside_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    committed = _pins((ROOT / "docker/constraints-cpu.txt").read_text())
    assert _pins(proc.stdout) == committed, "run `python docker/freeze_constraints.py > docker/constraints-cpu.txt`"
    assert {"onnxruntime", "fastapi", "cryptography", "numpy", "uvicorn"} <= {p.split("==")[0] for p in committed}
    assert not any(p.startswith(("torch==", "onnxruntime-gpu==")) for p in committed)


@pytest.mark.slow
def test_installed_package_is_fdkd_alone_and_has_no_torch(image_venv, tmp_path):
    for name in ("torch", "serving", "pipeline", "calibration"):
        probe = _py(image_venv, f"import {name}", tmp_path)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, (name, probe.stderr)
    probe = _py(image_venv, "import fdkd.serving.app, fdkd.pipeline.cli, fdkd.pipeline.config as c; "
                            "print(c.load_config(None, []).name)", tmp_path)
    assert probe.returncode == 0 and probe.stdout.split() == ["avdigits"], probe.stderr  # the built-in config


@pytest.mark.slow
def test_installed_fdkd_serves_the_page_and_the_api_from_outside_the_checkout(image_venv, served_run, tmp_path):
    proc, url = start_server_process([str(image_venv / "bin/fdkd"), "serve", str(served_run)], cwd=tmp_path,
                                     env=_outside_env())
    try:
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text[:200]
        for src in re.findall(r'(?:src|href)="(ui/[^"]+)"', page.text):
            r = httpx.get(f"{url}/{src}")
            assert r.status_code == 200 and r.content, src
        info = httpx.get(f"{url}/v1/model").json()
        assert info["name"] == "served" and info["modality"] == "audio"
        from fdkd.serving.wav import write_wav

        r = httpx.post(f"{url}/v1/classify", content=write_wav([0.0] * 16000, 16000), timeout=30)
        assert r.status_code == 200 and r.json()["class_name"] in info["class_names"]
        assert httpx.post(f"{url}/v2/models/served/infer", json=BODY, timeout=30).status_code == 200
        spec = httpx.get(f"{url}/openapi.json").json()
        assert {"/", "/ui/page.js", "/ui/page.css", "/v1/model", "/v1/classify"} <= set(spec["paths"])
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]


@pytest.mark.slow
def test_browser_classifies_a_file_through_the_installed_page(image_venv, served_run, page, tiny_dataset,  # noqa: F811
                                                               tmp_path):
    from playwright.sync_api import expect

    proc, url = start_server_process([str(image_venv / "bin/fdkd"), "serve", str(served_run)], cwd=tmp_path,
                                     env=_outside_env())
    try:
        wav = tmp_path / "clip.wav"
        wav.write_bytes(_test_clip(tiny_dataset))
        page.goto(f"{url}/")
        expect(page.locator("#model-line")).to_contain_text("student")
        page.set_input_files("#file", str(wav))
        expect(page.locator("#result")).to_be_visible()
        api = httpx.post(f"{url}/v1/classify", content=wav.read_bytes(), headers={"content-type": "audio/wav"})
        assert page.inner_text("#pred-class") == api.json()["class_name"]
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_installed_cli_verifies_and_exports_triton_from_outside_the_checkout(image_venv, served_run, tmp_path):
    fdkd = str(image_venv / "bin/fdkd")
    out = subprocess.run([fdkd, "--help"], cwd=tmp_path, env=_outside_env(), capture_output=True, text=True)
    assert out.returncode == 0 and "serve" in out.stdout, out.stderr
    out = subprocess.run([fdkd, "verify", str(served_run)], cwd=tmp_path, env=_outside_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "every artifact" in out.stdout + out.stderr, out.stdout + out.stderr
    out = subprocess.run([fdkd, "export", "triton", str(served_run), str(tmp_path / "triton")], cwd=tmp_path,
                         env=_outside_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    config = next((tmp_path / "triton").rglob("config.pbtxt")).read_text()
    assert 'platform: "onnxruntime_onnx"' in config


@pytest.mark.slow
def test_a_planted_top_level_import_fails_installed_but_not_in_the_checkout(image_venv, tmp_path):
    """Why the checks above run outside the checkout: a module of fdkd.serving that imports ``serving`` (the old
    top-level name) imports fine from the checkout's root and fails for an installed user."""
    site = Path(_py(image_venv, "import fdkd.serving, os; print(os.path.dirname(fdkd.serving.__file__))",
                    tmp_path).stdout.strip())
    planted = site / "planted_import.py"
    planted.write_text("from serving import errors  # the old top-level name\n")
    try:
        outside = _py(image_venv, "import fdkd.serving.planted_import", tmp_path)
        assert outside.returncode != 0 and "No module named 'serving'" in outside.stderr
        # with the checkout's root on the path after site-packages (pytest from the root), it hides
        inside = _py(image_venv, f"import sys; sys.path.append({str(ROOT)!r}); import fdkd.serving.planted_import",
                     tmp_path)
        assert inside.returncode == 0, inside.stderr
    finally:
        planted.unlink()
