"""Shared fixtures: a small built-in dataset and a tiny trained teacher, built once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("FDKD_QUIET", "1")
torch.set_num_threads(1)  # deterministic, and the 2 cores are shared with the test runner


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts at the one thread set above: a training stage with ``threads`` set (tests/test_determinism.py
    runs at 2) changes torch's count for the whole process, and a session fixture built after it (the served run)
    would then train other weights and serve another graph depending on which tests ran first."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def tiny_overrides(tmp_root, labelled: float | None = 1.0) -> list[str]:
    """The tiny runs' overrides. Every label kept by default (the built-in run keeps 5 %: ``labelled=None`` keeps
    that, as tests/test_run.py's main-job runs do); the partly labelled mechanics have tests of their own."""
    return [
        f"runs_dir={tmp_root}/runs",
        f"data.cache_dir={tmp_root}/data",
        *([f"data.labelled={labelled}"] if labelled is not None else []),
        "data.avdigits.max_images=240", "data.avdigits.clips_per_image=1",
        # the tiny runs keep the plain clips only: with the built-in run's re-pronounced clip the tiny INT8
        # student's logits fall below test_compress's SQNR floor (18.6 dB), a tiny-model effect noted on issue 8
        "data.avdigits.pronunciation_variant_clips=0",
        "teacher.model.width=8", "teacher.model.depth=2", "teacher.optim.epochs=2",
        "distill.student.width=4", "distill.student.depth=2",
        "distill.optim.epochs=2", "distill.grad_norm_every=1",
    ]


# the served run: tiny models on ~36 test rows, where one flipped row is 2.8 points (tests/test_run.py runs a
# student that learns under the default gates)
SERVED_OVERRIDES = ["name=served", "quantize.calib_samples=64", "quantize.calib_methods=[minmax]",
                    "build.int8_method=minmax", "validate.gates.fp16_max_acc_drop_pt=10",
                    "validate.gates.int8_max_acc_drop_pt=30", "validate.gates.fp16_min_agree_pct=90",
                    "validate.gates.int8_min_agree_pct=70"]


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fdkd")


@pytest.fixture(scope="session")
def tiny_cfg(tiny_root):
    from fdkd.pipeline.config import load_config

    return load_config(None, tiny_overrides(tiny_root))


@pytest.fixture(scope="session")
def tiny_dataset(tiny_cfg):
    from fdkd.pipeline import data

    return data.load(tiny_cfg)


@pytest.fixture(scope="session")
def tiny_teachers(tiny_cfg, tiny_dataset):
    """Teachers for both modalities (bidirectional runs need both)."""
    from fdkd.pipeline import teacher

    return {m: teacher.run(tiny_cfg, m)[0] for m in ("image", "audio")}


@pytest.fixture(scope="session")
def served_run(tiny_root):
    """A finished, validated tiny run directory (what `fdkd serve` loads)."""
    from fdkd.pipeline import run
    from fdkd.pipeline.config import load_config

    cfg = load_config(None, tiny_overrides(tiny_root) + SERVED_OVERRIDES)
    run.run(cfg)
    return cfg.run_dir
