"""The training stages on a streamed dataset (``StreamRows``, through ``tests/streamed.py`` until the on-disk store
lands): the teacher stage and distillation (kd with its memory-mapped teacher cache and the audio augmenter, auto,
the shuffled and prototype controls, a teacher run every step) give bit-identical weights to the dense run at one
thread, and no ``x[...]`` reads more than a batch; under a 2-process gloo torchrun every training row is decoded once
per epoch and no rank decodes another's rows; a killed streamed stage resumes bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fdkd import artifacts
from fdkd.pipeline import train
from fdkd.pipeline.config import dump_config, load_config
from fdkd.pipeline.data.rows import StreamRows
from fdkd.pipeline.models.checkpoint import read_checkpoint
from fdkd.pipeline.resume import KILL_ENV
from tests.conftest import tiny_overrides
from tests.streamed import READS_ENV, read_log, use_streamed

REPO = Path(__file__).resolve().parents[1]
EVAL = 32  # eval batch in these tests: smaller than a split of the tiny set, so a whole-split read would show


@pytest.fixture
def calls(monkeypatch):
    """The row count of every ``StreamRows[...]`` call in this process, and a smaller eval batch for every run."""
    seen: list[int] = []
    real = StreamRows.__getitem__

    def getitem(self, idx):
        out = real(self, idx)
        seen.append(len(out))
        return out

    monkeypatch.setattr(StreamRows, "__getitem__", getitem)
    monkeypatch.setattr(train, "EVAL_BATCH", EVAL)
    return seen


def _cfg(root, name, *sets):
    return load_config(None, [*tiny_overrides(root), f"name={name}", "threads=1", *sets])


def _weights(path):
    return read_checkpoint(path)["state_dict"]


def _same(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"streamed weights differ from the dense run's: {different[:5]}"


def test_teacher_stage_streamed_is_bit_identical_and_reads_batches(tiny_cfg, tiny_dataset, monkeypatch, calls):
    from fdkd.pipeline import teacher

    root = tiny_cfg.runs_dir.parent
    dense_path, dense = teacher.run(_cfg(root, "st-teacher-dense", "data.workers=0"), "image")
    assert not calls  # the dense path never builds a StreamRows
    use_streamed(monkeypatch)
    path, metrics = teacher.run(_cfg(root, "st-teacher-stream", "data.workers=0"), "image")
    _same(path, dense_path)
    assert metrics["test_acc"] == dense["test_acc"] and metrics["val_acc"] == dense["val_acc"]
    n_train = len(tiny_dataset.indices("train"))
    assert max(calls) <= max(64, EVAL) < n_train  # a batch at most, never a whole split
    # DataLoader workers decode ahead: the same batches in the same order, so the same weights
    path2, _ = teacher.run(_cfg(root, "st-teacher-workers", "data.workers=2"), "image")
    _same(path2, dense_path)


VARIANTS = {
    "kd": ["distill.method=kd"],  # a memory-mapped teacher cache; the audio student's augmenter on its batches
    "auto": ["distill.method=auto", "data.labelled=0.5"],  # candidates sharing batches, tracked rows, two streams
    "shuffled": ["distill.method=kd", "distill.teacher_shuffle=true"],  # the teacher's input a lazy view
    "prototype": ["distill.method=kd", "distill.teacher_prototype=true"],
    "no-cache": ["distill.method=fd", "distill.teacher_cache=false"],  # the teacher's input fed every step
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_distill_streamed_is_bit_identical(tiny_cfg, tiny_teachers, tiny_dataset, monkeypatch, calls, variant):
    from fdkd.pipeline import distill

    root = tiny_cfg.runs_dir.parent
    sets = [*VARIANTS[variant], f"teacher.checkpoint={tiny_teachers['image']}", "data.workers=0"]
    dense_path, dense = distill.run(_cfg(root, f"st-{variant}-dense", *sets))
    use_streamed(monkeypatch)
    cfg = _cfg(root, f"st-{variant}-stream", *sets)
    path, results = distill.run(cfg)
    _same(path, dense_path)
    for key in ("val_acc", "test_acc", "epoch"):
        assert results["student"][key] == dense["student"][key]
    if variant == "auto":
        assert results["student"]["auto"] == dense["student"]["auto"]
    # a step's batch at most: partly labelled, the shared batch and the labelled one together (2 x 64)
    assert max(calls) <= (128 if variant == "auto" else 64) < len(tiny_dataset.indices("train"))
    assert not (cfg.run_dir / distill.CACHE_DIR).exists()  # the memory-mapped caches go with the stage


def test_teacher_cache_is_memory_mapped_when_streamed(tiny_cfg, tiny_teachers, tiny_dataset, tmp_path):
    """teacher_outputs on a streamed column with a folder: two .npy memory-maps, equal to the dense cache."""
    from fdkd.pipeline.accel import Accel
    from fdkd.pipeline.teacher import load_teacher
    from tests.streamed import streamed_over

    model, _ = load_teacher(tiny_cfg, "image", tiny_dataset)
    train_rows = tiny_dataset.indices("train")
    acc = Accel(torch.device("cpu"))
    f, z = train.teacher_outputs(model, torch.from_numpy(tiny_dataset.x["image"]), acc, rows=train_rows)
    ds = streamed_over(tiny_dataset)
    fm, zm = train.teacher_outputs(model, ds.x["image"], acc, rows=train_rows, out=tmp_path / "cache" / "image")
    assert torch.equal(f, fm) and torch.equal(z, zm)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["image.features.npy", "image.logits.npy"]
    assert isinstance(np.load(tmp_path / "cache" / "image.features.npy", mmap_mode="r"), np.memmap)


def _env(reads: Path | None = None, kill: str | None = None) -> dict:
    env = dict(os.environ, FDKD_QUIET="1", OMP_NUM_THREADS="1")
    env.pop(KILL_ENV, None)
    env.pop(READS_ENV, None)
    if reads is not None:
        env[READS_ENV] = str(reads)
    if kill:
        env[KILL_ENV] = kill
    return env


@pytest.mark.parametrize("stage", ["teacher", "distill"])
def test_two_process_run_reads_each_training_row_once_per_epoch_on_one_rank(tiny_cfg, tiny_teachers, tiny_dataset,
                                                                            tmp_path, stage):
    """2 gloo processes, streamed, one DataLoader worker each: per epoch every training row decoded once (padding
    aside) by one rank, equal shares; the evaluation reads (validation, test, the teacher cache, the unused-parameter
    probe) split between the ranks too."""
    root = tiny_cfg.runs_dir.parent
    epochs = 2
    sets = ([f"teacher.optim.epochs={epochs}"] if stage == "teacher" else
            [f"distill.optim.epochs={epochs}", "distill.method=kd", f"teacher.checkpoint={tiny_teachers['image']}"])
    cfg = _cfg(root, f"st-ddp-{stage}", *sets, "data.workers=1")
    conf, result, reads = tmp_path / "stage.yaml", tmp_path / "result.json", tmp_path / "reads"
    conf.write_text(dump_config(cfg))
    reads.mkdir()
    worker = ["fdkd.pipeline.teacher_worker", "--modality", "image"] if stage == "teacher" else [
        "fdkd.pipeline.distill_worker"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "tests.streamed", *worker, "--config", str(conf), "--result", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(reads), timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(result.read_text())
    assert (out["metrics"] if stage == "teacher" else out["student"])["world_size"] == 2
    log = read_log(reads)
    trained = "image" if stage == "teacher" else "audio"
    assert {m for _, m, _, ep in log if ep is not None} == {trained}
    train_rows = tiny_dataset.indices("train")
    n = len(train_rows)
    pad = 2 * -(-n // 2) - n  # DistributedSampler semantics: equal shards, the permutation's first rows repeated
    for e in range(epochs):
        per_rank = {r: Counter(row for rank, _, row, ep in log if ep == e and rank == r) for r in (0, 1)}
        both = per_rank[0] + per_rank[1]
        assert set(both) == set(train_rows.tolist())  # every training row seen in epoch e
        assert sum(both.values()) == n + pad and sum(c - 1 for c in both.values()) == pad  # once, padding aside
        assert sum(per_rank[0].values()) == sum(per_rank[1].values())  # equal shards: DDP never hangs
        assert len(set(per_rank[0]) & set(per_rank[1])) <= pad  # no rank decodes the other's rows
    for m in {m for _, m, _, _ in log}:  # evaluation and the teacher cache: each rank its own part
        evals = {r: {row for rank, mod, row, ep in log if ep is None and rank == r and mod == m} for r in (0, 1)}
        assert evals[0] and evals[1] and not evals[0] & evals[1], m
    evals = {row for _, m, row, ep in log if ep is None and m == trained}
    assert set(tiny_dataset.indices("val")) <= evals and set(tiny_dataset.indices("test")) <= evals


def test_killed_streamed_distill_resumes_bit_identical(tiny_cfg, tiny_teachers):
    root = tiny_cfg.runs_dir.parent
    sets = [*tiny_overrides(root), "threads=1", "data.workers=1", "data.labelled=0.5", "distill.optim.epochs=3",
            "distill.method=auto", f"teacher.checkpoint={tiny_teachers['image']}", "accel.band_split=matmul"]

    def fdkd(name, kill=None):
        args = ["distill", *[a for s in [*sets, f"name={name}"] for a in ("--set", s)]]
        return subprocess.run([sys.executable, "-m", "tests.streamed", "fdkd", *args], capture_output=True,
                              text=True, env=_env(kill=kill), timeout=600, cwd=REPO)

    straight = fdkd("st-resume-straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = fdkd("st-resume-killed", kill="distill:1")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    resumed = fdkd("st-resume-killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming distill from epoch 1 of 3" in resumed.stderr
    runs = root / "runs"
    _same(runs / "st-resume-killed" / artifacts.STUDENT, runs / "st-resume-straight" / artifacts.STUDENT)


def test_run_trains_the_teacher_under_torchrun_with_accel_nproc(tiny_cfg, tiny_dataset):
    """``fdkd run`` with ``accel.nproc=2``: the teacher stage runs in two torchrun processes and records it."""
    from fdkd.pipeline import run

    root = tiny_cfg.runs_dir.parent
    cfg = _cfg(root, "st-ddp-run", "accel.nproc=2")
    manifest = run.run(cfg, stop_after="teacher")
    rec = manifest["artifacts"][artifacts.TEACHER.format(modality="image")]
    assert rec["metrics"]["world_size"] == 2 and manifest["stages"]["teacher"]["status"] == "done"
    assert (cfg.run_dir / artifacts.TEACHER.format(modality="image")).exists()


def test_stages_on_the_on_disk_store_stream(tiny_cfg, tiny_teachers, tiny_dataset, calls):
    """``data.in_memory=false``: the teacher and distill stages read the real on-disk dataset (``Store``) batch by
    batch through DataLoader workers, and train the same models as from memory (the store's frontends are the
    loader's own numpy code on the same bytes)."""
    from fdkd.pipeline import data, distill, teacher

    root = tiny_cfg.runs_dir.parent
    cfg = _cfg(root, "st-store-teacher", "data.in_memory=false", "data.workers=0")
    assert isinstance(data.load(cfg).x["image"], StreamRows)
    calls.clear()
    path, metrics = teacher.run(cfg, "image")
    dense_path, dense = teacher.run(_cfg(root, "st-store-teacher-dense", "data.workers=0"), "image")
    assert calls and max(calls) <= 64 < len(tiny_dataset.indices("train"))
    _same(path, dense_path)
    assert metrics["test_acc"] == dense["test_acc"]
    sets = ["distill.method=kd", f"teacher.checkpoint={tiny_teachers['image']}", "data.workers=1"]
    spath, results = distill.run(_cfg(root, "st-store-kd", "data.in_memory=false", *sets))
    dpath, dres = distill.run(_cfg(root, "st-store-kd-dense", *sets))
    _same(spath, dpath)
    assert results["student"]["test_acc"] == dres["student"]["test_acc"]


def test_eval_batches_are_bounded_in_bytes_and_keep_the_main_jobs_size():
    """Eval-mode batches (and the model calls of export/quantize/validate over streamed rows) shrink for large rows:
    512 RGB images at 224x224 in one call took gigabytes of activations; the main job's 1x40x101 rows keep 512."""
    import torch

    from fdkd.row_features import CHUNK, CHUNK_BYTES, chunk_size

    assert train.eval_batch(torch.zeros(2, 1, 40, 101)) == train.EVAL_BATCH
    big = torch.zeros(2, 3, 224, 224)
    assert train.eval_batch(big) == 27 and 27 * big[0].numel() * 4 <= CHUNK_BYTES
    assert train.eval_batch(torch.zeros(2, 3, 4096, 4096)) == 1
    assert chunk_size(np.zeros((2, 1, 40, 101), np.float32)) == CHUNK
    assert chunk_size(np.zeros((2, 3, 224, 224), np.float32)) * 3 * 224 * 224 * 4 <= CHUNK_BYTES
