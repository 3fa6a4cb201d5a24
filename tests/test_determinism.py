"""Same command, same model: two-thread CPU training is bit-reproducible from process to process.

The other tests train on one thread (tests/conftest.py); here two fresh ``fdkd distill`` processes train the tiny
run at ``threads=2`` (the built-in run's count on a 2-core machine; the student wide enough to train in NHWC, the
main job's memory format on x86) and must give the same student.pt weights and metrics, with the numerics each
training stage ran at recorded in the manifest. ``fdkd.pipeline.numerics``: the wait policy and its checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def _distill(tmp_path: Path, runs: str, data_dir: Path) -> tuple[Path, str]:
    sets = [*tiny_overrides(tmp_path, labelled=None), f"runs_dir={tmp_path / runs}", f"data.cache_dir={data_dir}",
            "threads=2", "distill.student.width=8"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "KMP_", "MKL_"))}
    env["FDKD_QUIET"] = "1"
    out = subprocess.run([sys.executable, "-m", "fdkd", "distill", *[a for s in sets for a in ("--set", s)]],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / runs / "avdigits", out.stderr


def test_two_processes_at_two_threads_give_identical_weights(tmp_path, tiny_dataset, tiny_cfg):
    done = [_distill(tmp_path, f"runs{i}", tiny_cfg.data.cache_dir) for i in (1, 2)]
    runs = [r for r, _ in done]
    assert "channels_last off" not in done[0][1]  # the NHWC kernels train, as in the main job
    a, b = (torch.load(r / "student.pt", map_location="cpu", weights_only=False) for r in runs)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), f"{k} differs between two runs of the same command"
    ma, mb = ([{k: v for k, v in json.loads(s).items() if k != "epoch_seconds"}
               for s in (r / "metrics.jsonl").read_text().splitlines()] for r in runs)
    assert ma == mb
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    for stage in ("teacher", "distill"):
        num = manifest["stages"][stage]["numerics"]
        assert num["threads"] == 2
        assert num["omp_wait_policy"] == "PASSIVE"  # set by the CLI before torch loaded
        assert num["mkl_dynamic"] == "FALSE"


def test_prepare_openmp_keeps_a_users_value_and_sets_the_rest():
    from fdkd.pipeline.numerics import OPENMP_ENV, prepare_openmp

    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    done = prepare_openmp(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and "OMP_WAIT_POLICY" not in done
    assert env["MKL_DYNAMIC"] == OPENMP_ENV["MKL_DYNAMIC"] and env["KMP_BLOCKTIME"] == "0"


def test_check_names_a_changed_thread_count():
    from fdkd.pipeline.numerics import check

    rec = {"threads": 2, "cpu": "X", "torch": "2.13.0", "omp_wait_policy": "PASSIVE"}
    assert check(rec, dict(rec)) is None
    assert check(None, rec) is None
    assert check(rec, {**rec, "threads": 1}) == "threads 2 -> 1"


def test_a_stage_redone_at_another_thread_count_says_so(tiny_cfg, tmp_path):
    from fdkd.pipeline import run
    from fdkd.pipeline.progress import console
    from fdkd.pipeline.run_manifest import RunManifest

    manifest = RunManifest(tmp_path)
    manifest.data["stages"]["teacher"] = {"numerics": run._numerics(tiny_cfg, manifest, "teacher")}
    with console.capture() as same:
        rec = run._numerics(tiny_cfg, manifest, "distill")
    assert "other numerics" not in same.get()
    with console.capture() as other:
        rec = run._numerics(tiny_cfg.model_copy(update={"threads": rec["threads"] + 1}), manifest, "distill")
    assert rec["threads"] == manifest.data["stages"]["teacher"]["numerics"]["threads"] + 1
    assert "distill trains with other numerics than this run's teacher (threads" in other.get()
