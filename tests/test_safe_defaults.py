"""Safe defaults where fdkd listens: `fdkd verify` checks what the server checks before it becomes ready (one
function, ``fdkd.serving.model.load_model``); off loopback the server needs an API key unless told by name; the end
of a run names the serve command as it runs from where the user stands."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fdkd.pipeline.cli import _serve_hint, app
from fdkd.serving.model import NotServable, load_model
from tests.serving_helpers import failed_gate_copy, start_fdkd_serve

runner = CliRunner()


def _out(result) -> str:
    return " ".join(result.output.split())


def _reexported(served_run, tmp_path) -> Path:
    """A copy of the run whose student.onnx was exported again after validation (a standalone `fdkd export`): a new
    graph, recorded in the manifest with its new sha256, validation.json left as it was."""
    import onnx

    from fdkd.pipeline.run_manifest import RunManifest

    run_dir = tmp_path / "reexported"
    shutil.copytree(served_run, run_dir)
    graph = onnx.load(str(run_dir / "student.onnx"))
    onnx.helper.set_model_props(graph, {**{p.key: p.value for p in graph.metadata_props}, "reexported": "yes"})
    onnx.save(graph, str(run_dir / "student.onnx"))
    manifest = RunManifest.load(run_dir)
    rec = manifest.data["artifacts"]["student.onnx"]
    manifest.record("student.onnx", run_dir / "student.onnx", rec["stage"], list(rec["inputs"]))
    manifest.save()
    return run_dir


def test_verify_says_what_the_server_would_serve(served_run):
    result = runner.invoke(app, ["verify", str(served_run)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    served = load_model(served_run)
    assert f"`fdkd serve` would serve {served.artifact} ({served.sha256[:12]})" in _out(result)


def test_verify_refuses_a_stale_validation_as_the_server_does(served_run, tmp_path):
    run_dir = _reexported(served_run, tmp_path)
    with pytest.raises(NotServable, match="validation.json is stale for student.onnx") as refused:
        load_model(run_dir)
    result = runner.invoke(app, ["verify", str(run_dir)], env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    assert "matches its manifest hash" not in result.output  # every hash matches: only the server's check says no
    assert "`fdkd serve` would refuse this run" in _out(result) and str(refused.value) in _out(result)


def test_verify_refuses_a_failed_gate(served_run, tmp_path):
    run_dir = failed_gate_copy(served_run, tmp_path)
    result = runner.invoke(app, ["verify", str(run_dir)], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and "student.onnx failed its validation gate" in _out(result), result.output
    # --artifact checks what `fdkd serve --artifact` would be given: that graph's own gate passed
    result = runner.invoke(app, ["verify", str(served_run), "--artifact", "student.int8cpu.onnx"],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0 and "would serve student.int8cpu.onnx" in _out(result), result.output


def test_verify_names_a_tampered_artifact_once_per_check(served_run, tmp_path):
    run_dir = tmp_path / "tampered"
    shutil.copytree(served_run, run_dir)
    with open(run_dir / "student.onnx", "ab") as f:
        f.write(b"\0")
    result = runner.invoke(app, ["verify", str(run_dir)], env={"COLUMNS": "300"})
    out = _out(result)
    assert result.exit_code == 1 and "student.onnx: sha256 mismatch, tampered or truncated" in out
    assert "would refuse this run (live, never ready): student.onnx: sha256 mismatch with the manifest" in out


def test_off_loopback_without_a_key_is_refused_naming_the_opt_out(served_run):
    result = runner.invoke(app, ["serve", str(served_run), "--host", "0.0.0.0"], env={"FDKD_SERVE_API_KEY": None})
    out = _out(result)
    assert result.exit_code == 2, result.output
    assert "serving on 0.0.0.0 (not loopback) needs an API key: set FDKD_SERVE_API_KEY" in out
    assert "--insecure-no-api-key (FDKD_SERVE_INSECURE_NO_API_KEY=1)" in out
    result = runner.invoke(app, ["serve", str(served_run), "--host", "192.0.2.7"], env={"FDKD_SERVE_API_KEY": None})
    assert result.exit_code == 2 and "serving on 192.0.2.7 (not loopback) needs an API key" in _out(result)


@pytest.mark.slow
def test_off_loopback_serves_with_a_key_or_the_named_opt_out(served_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FDKD_SERVE_API_KEY"}
    for extra, flags, status in (({"FDKD_SERVE_API_KEY": "k3y"}, (), 401),
                                 ({}, ("--insecure-no-api-key",), 200)):
        with open(tmp_path / "serve.log", "w") as log:
            proc, url = start_fdkd_serve(served_run, "--host", "0.0.0.0", *flags, env={**env, **extra}, log=log)
        try:
            assert httpx.get(f"{url}/v1/model").status_code == status
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if flags:  # the opt-out is said out loud
            assert "--insecure-no-api-key: serving on 0.0.0.0 without an API key" in " ".join(
                (tmp_path / "serve.log").read_text().split())


def test_serve_hint_is_the_command_as_it_runs_from_here(monkeypatch, tmp_path):
    here = Path(sys.executable).parent
    script = here / "fdkd"
    assert script.is_file()  # the test venv has the console script
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv not activated: `fdkd` is not on PATH
    hint = _serve_hint(Path("runs/my run"))
    cmd = shlex.split(hint)
    assert cmd[-2:] == ["serve", "runs/my run"] and Path(cmd[0]).resolve() == script.resolve(), hint
    assert subprocess.run([*cmd[:-1], "--help"], capture_output=True, timeout=60).returncode == 0  # it runs
    monkeypatch.setenv("PATH", f"{here}{os.pathsep}/usr/bin:/bin")  # activated
    assert _serve_hint(Path("runs/avdigits")) == "fdkd serve runs/avdigits"
    monkeypatch.chdir(here.parent.parent)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert _serve_hint(Path("runs/avdigits")) == f"{os.path.relpath(script)} serve runs/avdigits"  # .venv/bin/fdkd


def test_validation_json_for_the_reexport_names_the_judged_hash(served_run, tmp_path):
    """The stale refusal names both hashes, so a user sees which graph validation judged."""
    run_dir = _reexported(served_run, tmp_path)
    judged = next(a["sha256"] for a in json.loads((run_dir / "validation.json").read_text())["artifacts"]
                  if a["name"] == "student.onnx")
    now = json.loads((run_dir / "manifest.json").read_text())["artifacts"]["student.onnx"]["sha256"]
    result = runner.invoke(app, ["verify", str(run_dir)], env={"COLUMNS": "300"})
    assert f"it judged sha256 {judged[:12]}, the file is {now[:12]}" in _out(result)
